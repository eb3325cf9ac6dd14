"""make docker-smoke: build the image from the real Dockerfile and run the CPU compose stack, for real.

For machines that run Docker but cannot pull images (scripts/docker-smoke installs Docker from Debian
first). Prints one line per check and `N passed, M failed`; exits 1 when any check failed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import yaml

from scripts.docker_smoke import compose, image, probes, stack, standins
from scripts.docker_smoke.docker import Dockerd, daemon_answers, run
from scripts.docker_smoke.report import Report, StepFailed

ROOT = Path(__file__).resolve().parents[2]
SMOKE_DOCKERFILES = ROOT / "deploy" / "docker" / "smoke"
# The stand-in recipe for each repository a production file names.
STAND_INS = {
    "python": SMOKE_DOCKERFILES / "python.Dockerfile",
    "prom/prometheus": SMOKE_DOCKERFILES / "prometheus.Dockerfile",
}
UNAVAILABLE = {"grafana"}  # services whose image no stand-in replaces: checked statically
PACKAGES = ("docker.io", "docker-compose", "debootstrap")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def seconds(duration: str) -> int:
    """A compose duration such as "30s" or "1m30s" in whole seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"unsupported stop_grace_period {duration!r}")
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def check_packages(report: Report) -> None:
    """The Debian packages scripts/docker-smoke installs are present."""
    found = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *PACKAGES], timeout=60)
    versions = dict(line.split(" ", 1) for line in found.out.splitlines() if " " in line and line.split(" ", 1)[1])
    report.require(
        "Debian packages",
        all(p in versions for p in PACKAGES),
        ", ".join(f"{p} {versions.get(p, 'missing')}" for p in PACKAGES),
    )


def build_stand_ins(report: Report, workdir: Path, images: list[str]) -> None:
    """The rootfs, then a stand-in per image name the production files use."""
    log = workdir / "stand-ins.log"
    if any(standins.is_stand_in(name) is not False for name in images):
        report.note(f"building stand-ins for {', '.join(images)} (log: {log})")
        standins.make_rootfs(report, workdir, log)
    for name in images:
        recipe = STAND_INS.get(name.rsplit(":", 1)[0])
        if recipe is None:
            report.require(f"stand-in for {name}", False, f"no recipe; known: {sorted(STAND_INS)}")
        else:
            standins.build_stand_in(report, name, recipe, log)


def run_stack(report: Report, workdir: Path, grace_s: int) -> None:
    """Generate the Compose-1.29 CPU stack, bring it up, check it, tear it down."""
    files = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"]
    data = compose.legacy_stack(ROOT, files, UNAVAILABLE)
    ports = compose.publish_free_ports(data)
    generated = workdir / "docker-compose.smoke.yml"
    compose.write(data, generated)
    project = f"{compose.load(files[0]).get('name', 'tandem')}-smoke"
    running = stack.Stack(ROOT, generated, project)
    try:
        running.up(report)
        container = stack.check_healthy(report, running)
        stack.check_models_served(report, container, ports["tandem"], project)
        probes.check_readme_requests(report, ROOT / "README.md", ports["tandem"])
        probes.check_prometheus(report, ports["prometheus"], job="tandem")
        stack.check_read_only(report, container)
        stack.check_sigterm(report, container, grace_s)
    finally:
        running.down(report)


def smoke(report: Report, workdir: Path) -> None:
    """Every step after dockerd, in order; a failed requirement raises StepFailed and skips the rest."""
    base = compose.load(ROOT / "docker-compose.yml")
    services = base["services"]
    bases = standins.dockerfile_bases((ROOT / "Dockerfile").read_text())
    build_stand_ins(report, workdir, [*bases, services["prometheus"]["image"]])
    extra = standins.extra_ca_certs(
        bases[0], Path(os.environ.get("SMOKE_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    )
    report.check(
        "CA certificates for pip in the build",
        True,
        f"{len(extra)} the host trusts beyond {bases[0]}, passed as EXTRA_CA_CERTS",
    )
    tag = services["tandem"]["image"]
    with image.torch_index(report, ROOT / "Dockerfile", workdir) as torch_url:
        report.note(
            f"building {tag} from the Dockerfile; the first build takes 10-15 min (log: {workdir / 'build.log'})"
        )
        image.build(report, ROOT, tag, torch_url, extra, workdir / "build.log")
    image.check_image(report, ROOT, tag)
    for name in sorted(UNAVAILABLE):
        probes.check_grafana_static(report, ROOT, base, services[name]["image"])
    grace = seconds(str(services["tandem"]["stop_grace_period"]))
    run_stack(report, workdir, grace)


def main(argv: list[str] | None = None) -> int:
    """Run the smoke test; 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp/tandem-docker-smoke"),  # noqa: S108 - root's own directory, kept for the logs
        help="logs and scratch space",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    print(f"docker-smoke: logs in {workdir}", flush=True)
    dockerd = Dockerd(workdir / "dockerd.log")
    try:
        check_packages(report)
        if daemon_answers():
            report.check("dockerd", True, "already running; left running")
        else:
            report.check("dockerd", True, dockerd.start())
        smoke(report, workdir)
    except StepFailed:
        pass
    except (KeyboardInterrupt, SystemExit):
        report.check("smoke run", False, "interrupted; tearing down")
        raise
    except (OSError, RuntimeError, ValueError, KeyError, yaml.YAMLError) as exc:
        report.check("smoke run", False, f"{type(exc).__name__}: {exc}")
    finally:
        if dockerd.process is not None:
            report.check("dockerd stopped", *dockerd.stop())
        print(f"{report.summary()} ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
