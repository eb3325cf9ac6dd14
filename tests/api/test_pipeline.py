"""The one infer path: a request is validated completely before it is queued, so it never fails its neighbours."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.api.models import echo
from tests.service.conftest import onnx_slow_doubler


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """An in-process server of one ONNX model with a string input, batching up to 16 rows over 200 ms."""
    echo(tmp_path / "echo" / "1" / "model.onnx")
    (tmp_path / "echo" / "model.json").write_text(json.dumps({"max_batch_size": 16, "max_batch_delay_ms": 200}))
    with TestClient(create_app(Settings(models_dir=tmp_path))) as http:
        yield http


def stats(client: TestClient) -> dict[str, Any]:
    [entry] = client.get("/v2/models/echo/versions/1/stats").json()["model_stats"]
    return dict(entry)


def test_a_request_that_cannot_be_fed_is_refused_before_queueing_and_its_neighbours_succeed(
    client: TestClient,
) -> None:
    before = stats(client)
    start = threading.Barrier(8)
    bad = {"instances": [{"b64": base64.b64encode(b"\xff\xfe not text").decode()}]}

    def send(index: int) -> tuple[int, Any]:
        start.wait(timeout=30)
        if index == 3:
            response = client.post("/v1/models/echo:predict", json=bad)
        else:
            body = {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": [f"word {index}"]}]}
            response = client.post("/v2/models/echo/infer", json=body)
        return response.status_code, response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))

    assert answers[3][0] == 400
    assert "input 's': BYTES elements must be UTF-8 text" in answers[3][1]["error"]
    good = [answer for index, answer in enumerate(answers) if index != 3]
    assert [code for code, _ in good] == [200] * 7
    assert sorted(body["outputs"][0]["data"][0] for _, body in good) == sorted(f"word {i}" for i in range(8) if i != 3)
    after = stats(client)
    assert after["inference_count"] - before["inference_count"] == 7  # the bad request never reached a batch
    queued = after["inference_stats"]["queue"]["count"] - before["inference_stats"]["queue"]["count"]
    assert queued == 7
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1


def test_a_full_queue_refuses_before_the_body_is_read(tmp_path: Path) -> None:
    onnx_slow_doubler(tmp_path / "slow" / "1" / "model.onnx", work=1536)
    config = {"max_batch_size": 1, "max_queue_size": 1, "max_concurrent_batches": 1}
    (tmp_path / "slow" / "model.json").write_text(json.dumps(config))
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    with TestClient(create_app(Settings(models_dir=tmp_path, warmup=False))) as client:
        start = threading.Barrier(8)

        def send(_: int) -> tuple[int, str | None]:
            start.wait(timeout=30)
            response = client.post("/v2/models/slow/infer", json=body)
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
        metrics = client.get("/metrics").text
    codes = sorted(code for code, _ in answers)
    assert set(codes) == {200, 503}, codes
    assert all(retry is not None and int(retry) >= 1 for code, retry in answers if code == 503)
    # Every refused request was answered without its body being read: only the served ones were measured.
    read = next(
        line for line in metrics.splitlines() if line.startswith('tandem_request_body_bytes_count{dialect="v2"}')
    )
    assert float(read.split()[-1]) == codes.count(200)
