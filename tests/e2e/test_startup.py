"""Start-up on a real server: it listens before models load, readiness tells the truth, Kubernetes variables pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.lifecycle import get, model_on_cue, wait_for
from tests.e2e.test_server import infer_json, make_repository
from tests.server import ROOT, ServerProcess, server_env, start_server, stop_server

pytestmark = pytest.mark.slow


def test_live_while_a_model_loads_ready_503_naming_it_then_200(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "models")
    server: ServerProcess | None = None
    try:
        with model_on_cue(repo, "late") as release:
            server = start_server(repo, tmp_path / "server.log", "--device", "cpu", wait_path="/v2/health/live")
            wait_for("the other model", lambda: get(server, "/v2/models/double/ready").status_code == 200, server)
            ready = get(server, "/v2/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {"error": "server is not ready: loading model 'late' version 1"}
            assert ready.headers["retry-after"] == "1"
            late = get(server, "/v2/models/late/ready")
            assert late.status_code == 503
            assert late.json() == {"error": "model 'late' version 1 is not ready: LOADING"}
            assert get(server, "/v2/models/late").json() == {"error": "model 'late' version 1 is not ready: LOADING"}
            assert get(server, "/ping").status_code == 503
            with server.client() as client:
                index = client.post("/v2/repository/index").json()
            assert {"name": "late", "version": "1", "state": "LOADING"} in index
            release()
            wait_for("ready", lambda: get(server, "/v2/health/ready").status_code == 200, server)
        assert get(server, "/v2/health/live").status_code == 200
        assert get(server, "/v2/models/late/ready").json() == {"name": "late", "ready": True}
        assert get(server, "/v2/models/late").json()["parameters"]["state"] == "READY"
        with server.client() as client:
            assert infer_json(client, 1.5).json()["outputs"][0]["data"] == [3.0] * 4
        log = server.output()
        assert log.index("Uvicorn running on") < log.index("model 'late' version 1 READY")
    finally:
        if server is not None:
            stop_server(server)


def test_an_empty_repository_is_live_but_not_ready(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    server = start_server(tmp_path / "models", tmp_path / "server.log", "--device", "cpu")
    try:
        assert get(server, "/v2/health/live").status_code == 200
        ready = get(server, "/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"error": "server is not ready: the model repository 'models' has no models"}
        assert get(server, "/ping").json() == {"status": "Unhealthy"}
    finally:
        stop_server(server)


@pytest.mark.parametrize("strict", [True, False])
def test_a_failed_model_makes_the_server_not_ready_unless_readiness_is_relaxed(tmp_path: Path, strict: bool) -> None:
    repo = make_repository(tmp_path / "models")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    flags = ["--device", "cpu"] + ([] if strict else ["--no-strict-readiness"])
    server = start_server(repo, tmp_path / "server.log", *flags)
    try:
        ready = get(server, "/v2/health/ready")
        broken = get(server, "/v2/models/broken/ready")
        with server.client() as client:
            served = infer_json(client, 1.0)
    finally:
        stop_server(server)
    assert broken.status_code == 503
    assert broken.json()["error"].startswith("model 'broken' version 1 is not ready: UNAVAILABLE (load failed: ")
    assert served.status_code == 200  # the good model serves either way
    if strict:
        assert ready.status_code == 503
        assert ready.json()["error"].startswith("server is not ready: model 'broken' version 1 is UNAVAILABLE: ")
    else:
        assert ready.status_code == 200


def kubernetes_environment() -> dict[str, str]:
    """What a pod of deploy/kubernetes/deployment.yaml sees with service links on: the manifest's variables, plus
    Kubernetes' own for the `kubernetes` Service, `tandem` (port http 8000) and `tandem-grpc` (port grpc 9000)."""
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: str(e["value"]) for e in container["env"]}
    for service, ip, port, port_name in (
        ("KUBERNETES", "10.96.0.1", 443, "HTTPS"),
        ("TANDEM", "10.96.12.34", 8000, "HTTP"),
        ("TANDEM_GRPC", "fd00::1234", 9000, "GRPC"),
    ):
        address = f"[{ip}]" if ":" in ip else ip
        link = f"tcp://{address}:{port}"
        env |= {
            f"{service}_SERVICE_HOST": ip,
            f"{service}_SERVICE_PORT": str(port),
            f"{service}_SERVICE_PORT_{port_name}": str(port),
            f"{service}_PORT": link,
            f"{service}_PORT_{port}_TCP": link,
            f"{service}_PORT_{port}_TCP_PROTO": "tcp",
            f"{service}_PORT_{port}_TCP_PORT": str(port),
            f"{service}_PORT_{port}_TCP_ADDR": ip,
        }
    return env


def test_the_server_starts_with_every_variable_kubernetes_injects(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "models")
    env = server_env(**kubernetes_environment())
    server = start_server(repo, tmp_path / "server.log", "--device", "cpu", wait_path="/v2/health/ready", env=env)
    try:
        with server.client() as client:
            assert infer_json(client, 2.0).json()["outputs"][0]["data"] == [4.0] * 4
    finally:
        stop_server(server)
    assert "TANDEM_PORT holds a Kubernetes service link" in server.output()


def test_a_misspelt_setting_still_stops_start_up_naming_it(tmp_path: Path) -> None:
    env = server_env(**kubernetes_environment(), TANDEM_MAX_BATCH_SIZ="4")
    command = [sys.executable, "-m", "service", "serve", "--models", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "unknown setting(s) in the environment: TANDEM_MAX_BATCH_SIZ" in result.stderr
    assert "TANDEM_SERVICE_HOST" not in result.stderr
