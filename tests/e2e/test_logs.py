"""Structured logs of a real server: every line JSON from start to shutdown; the access log's fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.server import start_server, stop_server
from tests.service.conftest import onnx_doubler

pytestmark = pytest.mark.slow
BODY = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}]}).encode()
JSON = {"Content-Type": "application/json"}


def serve_and_stop(tmp_path: Path, *flags: str) -> list[dict[str, Any]]:
    """Start a server over one model, send an infer request and a 404, stop it; its log as parsed JSON lines."""
    onnx_doubler(tmp_path / "models" / "double" / "1" / "model.onnx")
    log = tmp_path / "server.log"
    server = start_server(tmp_path / "models", log, "--device", "cpu", *flags, wait_path="/v2/health/ready")
    try:
        with server.client() as client:
            answer = client.post("/v2/models/double/infer", content=BODY, headers={**JSON, "X-Request-Id": "req-42"})
            assert answer.status_code == 200, answer.text
            assert client.get("/no/such/route").status_code == 404
    finally:
        assert stop_server(server) == 0, server.output()
    lines = log.read_text().splitlines()
    assert lines, "the server logged nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{server.output()}")
    return parsed


def test_json_logs_from_start_to_shutdown_with_the_access_log(tmp_path: Path) -> None:
    lines = serve_and_stop(tmp_path, "--log-format", "json", "--access-log")
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    loggers = {line["logger"] for line in lines}
    assert any(name.startswith("uvicorn") for name in loggers), loggers  # uvicorn's lines use the same format
    access = [line for line in lines if line["logger"] == "tandem.access"]
    infer = next(line for line in access if line["path"] == "/v2/models/double/infer")
    assert infer["request_id"] == "req-42"
    assert (infer["method"], infer["model"], infer["version"], infer["status"]) == ("POST", "double", "1", 200)
    assert infer["bytes_in"] == len(BODY)
    assert infer["bytes_out"] > 0
    assert infer["queue_ms"] >= 0
    assert infer["compute_ms"] > 0
    assert infer["total_ms"] >= infer["compute_ms"]
    missing = next(line for line in access if line["path"] == "/no/such/route")
    assert missing["status"] == 404
    assert missing["request_id"]


def test_text_logs_and_no_access_log_by_default(tmp_path: Path) -> None:
    onnx_doubler(tmp_path / "models" / "double" / "1" / "model.onnx")
    log = tmp_path / "server.log"
    server = start_server(tmp_path / "models", log, "--device", "cpu", "--log-format", "text")
    try:
        with server.client() as client:
            assert client.post("/v2/models/double/infer", content=BODY, headers=JSON).status_code == 200
    finally:
        assert stop_server(server) == 0, server.output()
    text = log.read_text()
    assert " INFO uvicorn.error: " in text or " INFO uvicorn" in text, text
    assert "tandem.access" not in text
    assert not any(line.startswith("{") for line in text.splitlines())
