"""Local stand-ins for the base images, tagged with the names the Dockerfile and compose file use.

No image registry is reachable where the smoke run is meant to work, so the images the production
files name are built here instead: a Debian bookworm rootfs made with debootstrap, then
deploy/docker/smoke/python.Dockerfile and prometheus.Dockerfile on top of it. An image already
present under one of those names that is not a stand-in (a real pull) is used as it is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from scripts.docker_smoke.docker import DOCKER, docker, inspect, legacy_build_env, run_logged
from scripts.docker_smoke.report import Report

LABEL = "io.tandem.smoke.stand-in"
ROOTFS = "tandem-smoke-rootfs:bookworm"
MIRROR = "http://deb.debian.org/debian"
ROOTFS_PACKAGES = "python3,python3-venv,ca-certificates,netbase,tzdata"
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def dockerfile_bases(text: str) -> list[str]:
    """The images the Dockerfile's FROM lines name, in order, without the stage aliases."""
    images: list[str] = []
    aliases: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [w for w in words[1:] if not w.startswith("--")]
        if words[0] not in aliases and words[0] not in images:
            images.append(words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            aliases.add(words[2])
    return images


def is_stand_in(image: str) -> bool | None:
    """True for a stand-in this run built, False for any other image, None when the name is absent."""
    data = inspect("image", image)
    if data is None:
        return None
    labels = (data.get("Config") or {}).get("Labels") or {}
    return labels.get(LABEL) == "true"


def make_rootfs(report: Report, workdir: Path, log_path: Path) -> None:
    """Debootstrap a bookworm minbase rootfs and import it as ROOTFS (skipped when it exists)."""
    if inspect("image", ROOTFS) is not None:
        report.check("stand-in rootfs", True, f"{ROOTFS} already imported (debootstrap skipped)")
        return
    target = Path(tempfile.mkdtemp(prefix="rootfs-", dir=workdir))
    try:
        command = ["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", "bookworm", str(target), MIRROR]
        with log_path.open("a") as log:
            status = run_logged(command, log, timeout=1200)
        report.require(
            "stand-in rootfs: debootstrap bookworm minbase",
            status == 0,
            ROOTFS_PACKAGES if status == 0 else f"exit status {status}; see {log_path}",
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (target / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(target), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [DOCKER, "import", "--change", f'LABEL {LABEL}="true"', "-", ROOTFS],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tar.wait(timeout=60)
        report.require("stand-in rootfs: docker import", imported.returncode == 0, imported.stderr.strip() or ROOTFS)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def build_stand_in(report: Report, image: str, dockerfile: Path, log_path: Path) -> None:
    """Build dockerfile as `image` unless a real image of that name is present."""
    present = is_stand_in(image)
    if present is False:
        report.check(f"base image {image}", True, "a real image of this name is present; used as is")
        return
    with log_path.open("a") as log:
        status = run_logged(
            [DOCKER, "build", "--tag", image, "--file", str(dockerfile), str(dockerfile.parent)],
            log,
            timeout=1200,
            env=legacy_build_env(),
        )
    how = "rebuilt from cache" if present else "built"
    report.require(
        f"stand-in {image}", status == 0, f"{how} from {dockerfile.name}" if status == 0 else f"see {log_path}"
    )


def extra_ca_certs(base_image: str, host_bundle: Path) -> list[str]:
    """The host's trusted CA certificates that base_image's bundle lacks (an intercepting proxy's CA)."""
    if not host_bundle.is_file():
        return []
    result = docker("run", "--rm", "--entrypoint", "cat", base_image, "/etc/ssl/certs/ca-certificates.crt")
    if not result.ok:
        raise RuntimeError(f"cannot read {base_image}'s CA bundle: {result.tail()}")
    known = {"".join(pem.split()) for pem in PEM.findall(result.out)}
    return [pem for pem in PEM.findall(host_bundle.read_text()) if "".join(pem.split()) not in known]
