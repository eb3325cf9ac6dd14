"""make docker-smoke substitutes images only on its own path: the production files keep their real names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.docker_smoke import compose as smoke_compose
from scripts.docker_smoke.__main__ import STAND_INS, UNAVAILABLE
from scripts.docker_smoke.probes import readme_requests
from scripts.docker_smoke.standins import dockerfile_bases
from tests.deploy.conftest import ROOT
from tests.deploy.test_compose import BASE, CPU, load, merge, plain, validate
from tests.deploy.test_dockerfile import hadolint_binary, parse_stages

# The production names, exactly. The smoke run builds stand-ins under these names; it never edits them.
PRODUCTION_FROM = ["FROM python:3.11.14-slim-bookworm AS build", "FROM python:3.11.14-slim-bookworm AS runtime"]
PRODUCTION_IMAGES = {
    "tandem": "tandem:0.1.0",
    "prometheus": "prom/prometheus:v3.5.0",
    "grafana": "grafana/grafana:12.2.0",
}
SMOKE_DOCKERFILES = sorted((ROOT / "deploy" / "docker" / "smoke").glob("*.Dockerfile"))


def test_production_from_lines_are_untouched() -> None:
    lines = [
        ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip().upper().startswith("FROM")
    ]
    assert lines == PRODUCTION_FROM


def test_production_image_lines_are_untouched() -> None:
    images = {name: service.get("image") for name, service in load(BASE)["services"].items()}
    assert images == PRODUCTION_IMAGES
    assert not any("image" in service for service in plain(load(CPU))["services"].values())


def test_dockerfile_build_arguments_default_to_production() -> None:
    args = [a for stage in parse_stages((ROOT / "Dockerfile").read_text()) for a in stage.args("ARG")]
    assert sorted(set(args)) == ['EXTRA_CA_CERTS=""', "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]


def test_no_production_file_names_a_stand_in() -> None:
    for path in (ROOT / "Dockerfile", BASE, CPU, ROOT / "deploy" / "kubernetes" / "deployment.yaml"):
        assert "tandem-smoke" not in path.read_text(), f"{path.name} refers to a smoke-test stand-in"


def test_every_base_image_has_a_stand_in_recipe() -> None:
    names = [*dockerfile_bases((ROOT / "Dockerfile").read_text()), PRODUCTION_IMAGES["prometheus"]]
    assert names == ["python:3.11.14-slim-bookworm", "prom/prometheus:v3.5.0"]
    for name in names:
        assert name.rsplit(":", 1)[0] in STAND_INS
    assert sorted(STAND_INS.values()) == SMOKE_DOCKERFILES
    assert {"grafana"} == UNAVAILABLE


@pytest.mark.parametrize("path", SMOKE_DOCKERFILES, ids=lambda p: p.name)
def test_stand_in_dockerfiles_lint_clean(path: Path) -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"
    assert re.search(r"^FROM tandem-smoke-rootfs:bookworm$", path.read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def legacy() -> dict[str, Any]:
    return smoke_compose.legacy_stack(ROOT, [BASE, CPU], set(UNAVAILABLE))


def test_legacy_stack_is_the_compose_v2_merge(legacy: dict[str, Any]) -> None:
    """The file generated for Compose 1.29 equals what Compose v2 makes of the two files, less name and Grafana."""
    expected = merge(load(BASE), load(CPU))
    del expected["name"], expected["services"]["grafana"], expected["volumes"]["grafana-data"]
    assert "deploy" not in legacy["services"]["tandem"], "the CPU stack still reserves a GPU"
    expected_tandem = {k: v for k, v in expected["services"]["tandem"].items() if k not in ("deploy", "build")}
    legacy_tandem = {k: v for k, v in legacy["services"]["tandem"].items() if k != "build"}
    assert legacy_tandem == expected_tandem
    assert legacy["services"]["tandem"]["build"]["context"] == str(ROOT)
    prometheus = legacy["services"]["prometheus"]
    config = next(v for v in prometheus["volumes"] if isinstance(v, dict))
    assert config["source"] == str(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    assert {k: v for k, v in prometheus.items() if k != "volumes"} == {
        k: v for k, v in expected["services"]["prometheus"].items() if k != "volumes"
    }
    assert legacy["volumes"] == expected["volumes"]
    assert "name" not in legacy, "Compose 1.29 rejects the top-level name"


def test_legacy_stack_is_plain_yaml_and_valid(legacy: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "stack.yml"
    smoke_compose.write(legacy, out)
    reread = yaml.safe_load(out.read_text())  # Compose 1.29 loads with safe_load: no !reset may survive
    assert reread == legacy
    validate(reread)


def test_taken_ports_move_and_free_ones_stay(legacy: dict[str, Any]) -> None:
    import copy
    import socket

    stack = copy.deepcopy(legacy)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        stack["services"]["tandem"]["ports"] = [f"127.0.0.1:{taken}:8000"]
        published = smoke_compose.publish_free_ports(stack)
    assert published["tandem"] != taken
    assert stack["services"]["tandem"]["ports"] == [f"127.0.0.1:{published['tandem']}:8000"]


def test_split_short_keeps_variables_whole() -> None:
    assert smoke_compose.split_short("${MODELS_DIR:-models}:/models:ro") == ["${MODELS_DIR:-models}", "/models", "ro"]


def test_readme_requests_are_the_three_dialects() -> None:
    requests = readme_requests((ROOT / "README.md").read_text())
    assert [(r.method, r.path) for r in requests] == [
        ("POST", "/v2/models/digits_mlp/infer"),
        ("POST", "/v1/models/digits_mlp:predict"),
        ("POST", "/predictions/digits_mlp"),
    ]
    assert all(r.body.strip()[:1] in "[{" for r in requests)


def test_make_docker_smoke_is_separate_from_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docker-smoke:.*\n\tscripts/docker-smoke$", makefile, re.MULTILINE)
    test_line = next(ln for ln in makefile.splitlines() if ln.startswith("test:"))
    assert "docker-smoke" not in test_line
    assert "make docker-smoke" in (ROOT / "README.md").read_text()
