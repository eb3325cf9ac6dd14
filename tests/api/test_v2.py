"""KServe V2 over HTTP, in process: every endpoint, every bad input a 4xx E1 body, deadlines, queue, metrics."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fakes import JsonArtifactLoader, write_json_model

MAX_BODY = 16 * 1024
JSON = "application/json"


@contextlib.contextmanager
def serving(repo: Path, **settings: Any) -> Iterator[TestClient]:
    """The app over `repo` with JsonArtifactRuntime models, lifespan running for the duration."""
    options: dict[str, Any] = {"models_dir": repo, "max_body_bytes": MAX_BODY, "warmup": False, **settings}
    app = create_app(Settings(**options), loader=JsonArtifactLoader())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """m: versions 1 and 2 (all served); slow: 0.4 s per call, no batching, a queue of one; buggy: fails on 13;
    queued: 0.4 s per call, no batching, a 50 ms queue timeout."""
    for version in (1, 2):
        write_json_model(tmp_path, "m", version, config={"version_policy": "all", "max_batch_size": 8})
    write_json_model(tmp_path, "slow", 1, delay_s=0.4, config={"max_batch_size": 0, "max_queue_size": 1})
    write_json_model(tmp_path, "buggy", 1, fail_value=13)
    queued = {"max_batch_size": 0, "queue_timeout_ms": 50}
    write_json_model(tmp_path, "queued", 1, delay_s=0.4, config=queued)
    return tmp_path


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    with serving(repo) as client:
        yield client


def infer_body(rows: int = 1, value: float = 1.0, **extra: Any) -> dict[str, Any]:
    data = np.full((rows, 4), value).tolist()
    return {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data}], **extra}


def assert_e1(response: Any, status: int, *fragments: str) -> str:
    """A V2 error: the status, exactly application/json, exactly {"error": msg} naming each fragment, no leaks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert list(body) == ["error"], body
    message: str = body["error"]
    for fragment in fragments:
        assert fragment in message, message
    for leak in ("Traceback", "detail", "/tmp", "site-packages", "object at 0x", ".py"):
        assert leak not in message, message
    return message


# ----- health and metadata ----------------------------------------------------------------------


def test_live_and_ready_answer_json(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    with serving(tmp_path) as client:
        live = client.get("/v2/health/live")
        assert live.status_code == 200
        assert live.headers["content-type"] == JSON
        assert live.json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_a_failed_model_makes_the_server_not_ready_but_still_live(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    write_json_model(tmp_path, "bad", 1, load_error="not a valid ONNX model")
    with serving(tmp_path) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert_e1(client.get("/v2/health/ready"), 503, "not ready")
        assert_e1(client.get("/v2/models/bad/ready"), 503, "bad", "not a valid ONNX model")
        assert_e1(client.get("/v2/models/bad"), 503, "bad")
        assert_e1(client.post("/v2/models/bad/infer", json=infer_body()), 503, "bad")
        assert client.get("/v2/models/m/ready").json() == {"name": "m", "ready": True}
        index = client.post("/v2/repository/index").json()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            ("bad", "1", "UNAVAILABLE"),
            ("m", "1", "READY"),
        ]
        assert index[0]["reason"] == "load failed: not a valid ONNX model"


def test_server_metadata_lists_the_extensions(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "tandem"
    assert body["version"].count(".") == 2
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(body["extensions"])


def test_model_metadata_shows_versions_platform_and_signature(client: TestClient) -> None:
    body = client.get("/v2/models/m").json()
    body.pop("parameters", None)  # optional extras (device) are allowed
    assert body == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "version", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert client.get("/v2/models/m/versions/1").json()["name"] == "m"
    assert client.get("/v2/models/m/versions/2/ready").json() == {"name": "m", "ready": True}


def test_config_shows_the_effective_per_model_configuration(client: TestClient) -> None:
    body = client.get("/v2/models/m/config").json()
    assert body["name"] == "m"
    assert body["platform"] == "onnx_onnxv1"
    assert body["max_batch_size"] == 8
    assert body["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert body["output"][1] == {"name": "version", "data_type": "TYPE_INT64", "dims": []}
    assert body["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert body["tandem"]["limits"]["max_batch_size"] == 8
    assert body["tandem"]["limits"]["max_queue_size"] == 1024
    assert body["tandem"]["version"] == "2"
    assert body["tandem"]["device"] == "cpu"
    assert body["tandem"]["version_policy"] == "all"
    slow = client.get("/v2/models/slow/versions/1/config").json()
    assert slow["tandem"]["limits"]["max_queue_size"] == 1
    assert slow["max_batch_size"] == 0
    assert "dynamic_batching" not in slow


def test_statistics_count_requests(client: TestClient) -> None:
    assert client.post("/v2/models/m/versions/1/infer", json=infer_body(rows=3)).status_code == 200
    stats = client.get("/v2/models/m/versions/1/stats").json()["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("m", "1")]
    assert stats[0]["inference_count"] == 3
    assert stats[0]["inference_stats"]["success"]["count"] == 1
    assert {(s["name"], s["version"]) for s in client.get("/v2/models/stats").json()["model_stats"]} >= {("m", "2")}
    assert_e1(client.get("/v2/models/nope/stats"), 404, "nope")


def test_model_control_is_forbidden_unless_enabled(client: TestClient) -> None:
    assert_e1(client.post("/v2/repository/models/m/load"), 403)
    assert_e1(client.post("/v2/repository/models/m/unload"), 403)


# ----- infer ------------------------------------------------------------------------------------


def test_json_infer_answers_the_latest_version_and_echoes_the_id(client: TestClient) -> None:
    response = client.post("/v2/models/m/infer", json=infer_body(rows=2, value=1.5, id="r1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert response.json() == {
        "model_name": "m",
        "model_version": "2",
        "id": "r1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [3.0] * 8},
            {"name": "version", "datatype": "INT64", "shape": [2], "data": [2, 2]},
        ],
    }
    response = client.post("/v2/models/m/infer", json=infer_body())
    assert response.status_code == 200, response.text
    assert "id" not in response.json()


def test_a_version_in_the_path_is_served(client: TestClient) -> None:
    body = client.post("/v2/models/m/versions/1/infer", json=infer_body()).json()
    assert body["model_version"] == "1"
    assert body["outputs"][1]["data"] == [1]


def test_flat_data_and_requested_output_order(client: TestClient) -> None:
    request = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "version"}, {"name": "y"}],
    }
    body = client.post("/v2/models/m/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["version", "y"]
    assert body["outputs"][1]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_nan_and_infinity_tokens_in_come_back_as_null(client: TestClient) -> None:
    raw = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[NaN, Infinity, -Infinity, 1]}]}'
    response = client.post("/v2/models/m/infer", content=raw, headers={"content-type": JSON})
    assert response.status_code == 200
    assert orjson.loads(response.content)["outputs"][0]["data"] == [None, None, None, 2.0]


def test_binary_inputs_and_outputs(client: TestClient) -> None:
    x = np.arange(8, dtype="<f4").reshape(2, 4)
    header = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "version"}],
        }
    )
    response = client.post(
        "/v2/models/m/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    head = orjson.loads(response.content[:length])
    assert head["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 4],
        "parameters": {"binary_data_size": 32},
    }
    assert head["outputs"][1]["data"] == [2, 2]
    assert np.frombuffer(response.content[length:], "<f4").tolist() == (x * 2).reshape(-1).tolist()


def test_binary_data_output_sends_every_output_binary(client: TestClient) -> None:
    response = client.post("/v2/models/m/infer", json=infer_body(parameters={"binary_data_output": True}))
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    sizes = [o["parameters"]["binary_data_size"] for o in orjson.loads(response.content[:length])["outputs"]]
    assert sizes == [16, 8]
    assert len(response.content) == length + 24


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies_are_decoded(client: TestClient, encoding: str) -> None:
    raw = orjson.dumps(infer_body())
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    response = client.post(
        "/v2/models/m/infer", content=packed, headers={"content-encoding": encoding, "content-type": JSON}
    )
    assert response.status_code == 200, response.text


# ----- bad requests: every one a 4xx E1 naming the problem ----------------------------------------


def _input(**overrides: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **overrides}


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ["malformed JSON"]),
        (b"", ["empty"]),
        (b"[]", ["JSON object"]),
        ({"inputs": [_input(shape=[1, 3], data=[1, 2, 3])]}, ["model 'm' version 2", "input 'x'", "[-1, 4]", "[1, 3]"]),
        ({"inputs": [_input(shape=[4], data=[1, 2, 3, 4])]}, ["input 'x'", "rank"]),
        ({"inputs": [_input(datatype="FP64")]}, ["input 'x'", "FP32", "FP64"]),
        ({"inputs": [_input(datatype="INT32")]}, ["input 'x'", "FP32", "INT32"]),
        ({"inputs": [_input(datatype="INT32", data=[1.5, 2, 3, 4])]}, ["input 'x'", "INT32", "floats"]),
        ({"inputs": [_input(data=[True, False, True, False])]}, ["input 'x'", "FP32"]),
        ({"inputs": [_input(name="z")]}, ["missing", "'x'"]),
        ({"inputs": [_input(), _input(name="extra")]}, ["unknown", "'extra'"]),
        ({"inputs": [_input(), _input()]}, ["'x'", "more than once"]),
        ({"inputs": [_input(data=[1, 2, 3])]}, ["input 'x'", "4 elements", "3"]),
        ({"inputs": [_input(shape=[2, 4])]}, ["input 'x'", "8 elements", "4"]),
        ({"inputs": [_input(data=[[1, 2], [3]])]}, ["input 'x'", "rectangular"]),
        ({"inputs": [_input(shape=[1, -4])]}, ["input 'x'", "shape"]),
        ({"inputs": [_input(datatype="FP8")]}, ["FP8"]),
        ({"inputs": [_input()], "outputs": [{"name": "nope"}]}, ["unknown output 'nope'"]),
        ({"inputs": [_input()], "outputs": [{"name": "y"}, {"name": "y"}]}, ["'y'", "more than once"]),
        ({"inputs": [_input()], "parameters": {"sequence_id": 1}}, ["sequence_id"]),
        ({"inputs": [_input()], "whatever": 1}, ["whatever"]),
        ({"inputs": [_input()], "id": 5}, ["'id'"]),
    ],
)
def test_bad_infer_requests_are_400_naming_the_problem(
    client: TestClient, body: bytes | dict[str, Any], fragments: list[str]
) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = client.post("/v2/models/m/infer", content=raw, headers={"content-type": JSON})
    assert_e1(response, 400, *fragments)


def test_a_batch_larger_than_max_batch_size_is_a_400(client: TestClient) -> None:
    assert_e1(client.post("/v2/models/m/infer", json=infer_body(rows=9)), 400, "9 rows", "max_batch_size 8")


def test_deeply_nested_json_is_a_400(client: TestClient) -> None:
    raw = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ' + b"[" * 3000 + b"]" * 3000
    response = client.post("/v2/models/m/infer", content=raw + b"}]}", headers={"content-type": JSON})
    assert_e1(response, 400)


def test_a_huge_declared_shape_is_413_before_allocation(client: TestClient) -> None:
    body = {"inputs": [_input(shape=[2**40, 4], data=[])]}
    assert_e1(client.post("/v2/models/m/infer", json=body), 413, "input 'x'")


def test_binary_sizes_that_do_not_add_up_are_400(client: TestClient) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    )
    cases = [(header + bytes(12), str(len(header))), (header + bytes(20), str(len(header))), (header, "0")]
    for raw, length in cases:
        response = client.post("/v2/models/m/infer", content=raw, headers={"Inference-Header-Content-Length": length})
        assert_e1(response, 400)
    response = client.post(
        "/v2/models/m/infer", content=header + bytes(16), headers={"Inference-Header-Content-Length": "99999"}
    )
    assert_e1(response, 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        ("/v2/models/nope/infer", ["model 'nope' not found"]),
        ("/v2/models/m/versions/7/infer", ["model 'm'", "7"]),
        ("/v2/models/m/versions/abc/infer", ["model 'm'", "abc"]),
        ("/v2/models/m/versions/01/infer", ["model 'm'", "01"]),
        ("/v2/models/m/versions/0/infer", ["model 'm'"]),
        ("/v2/models/m/versions/99999999999999999999999/infer", ["model 'm'"]),
    ],
)
def test_unknown_models_and_versions_are_404(client: TestClient, path: str, fragments: list[str]) -> None:
    assert_e1(client.post(path, json=infer_body()), 404, *fragments)
    assert_e1(client.get(path.removesuffix("/infer")), 404)
    assert_e1(client.get(path.removesuffix("/infer") + "/ready"), 404)


@pytest.mark.parametrize("name", ["bad%20name", "-dash", "a" * 129, "caf%C3%A9"])
def test_a_name_outside_the_model_name_grammar_is_400_before_any_lookup(client: TestClient, name: str) -> None:
    assert_e1(client.post(f"/v2/models/{name}/infer", json=infer_body()), 400, "model name")
    assert_e1(client.get(f"/v2/models/{name}"), 400, "model name")
    assert_e1(client.get(f"/v2/models/{name}/versions/1/ready"), 400, "model name")


def test_a_body_over_max_body_bytes_is_413_by_content_length(client: TestClient) -> None:
    raw = b" " * (MAX_BODY + 1)
    assert_e1(client.post("/v2/models/m/infer", content=raw, headers={"content-type": JSON}), 413, "max_body_bytes")


def test_a_body_over_max_body_bytes_is_413_when_streamed(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    response = client.post("/v2/models/m/infer", content=chunks(), headers={"content-type": JSON})
    assert "content-length" not in response.request.headers
    assert_e1(response, 413, "max_body_bytes")


def test_a_gzip_bomb_is_413_once_decoded_past_the_limit(client: TestClient) -> None:
    bomb = gzip.compress(b" " * (64 * MAX_BODY))
    assert len(bomb) < MAX_BODY
    response = client.post("/v2/models/m/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert_e1(response, 413, "decoded")


def test_corrupt_gzip_is_400_and_an_unknown_encoding_415(client: TestClient) -> None:
    response = client.post("/v2/models/m/infer", content=b"not gzip", headers={"content-encoding": "gzip"})
    assert_e1(response, 400, "gzip")
    response = client.post("/v2/models/m/infer", content=b"{}", headers={"content-encoding": "br"})
    assert_e1(response, 415, "'br'")


def test_unknown_routes_and_wrong_methods_answer_e1(client: TestClient) -> None:
    for path in ("/v2/nothing", "/nope", "/v2/models/m/versions/1/infer/extra"):
        assert_e1(client.get(path), 404)
    response = client.get("/v2/models/m/infer")
    assert_e1(response, 405, "GET")
    assert "POST" in response.headers["allow"]
    assert_e1(client.delete("/v2/health/live"), 405)
    assert_e1(client.put("/v2/models/m/versions/1/infer", json=infer_body()), 405)


def test_a_model_bug_is_a_generic_500_quoting_the_request_id(client: TestClient) -> None:
    response = client.post("/v2/models/buggy/infer", json=infer_body(value=13), headers={"x-request-id": "req-42"})
    message = assert_e1(response, 500)
    assert message == "internal error (request id req-42)"
    assert client.post("/v2/models/buggy/infer", json=infer_body(value=1)).status_code == 200


# ----- request ids ------------------------------------------------------------------------------


def test_the_request_id_is_echoed_or_generated(client: TestClient) -> None:
    def request_id(response: Any, status: int = 200) -> str:
        assert response.status_code == status, response.text
        return str(response.headers["x-request-id"])

    assert request_id(client.get("/v2/health/live", headers={"x-request-id": "abc-123"})) == "abc-123"
    echoed = client.post("/v2/models/m/infer", json=infer_body(), headers={"x-request-id": "r.1:2"})
    assert request_id(echoed) == "r.1:2"
    generated = {request_id(client.get("/v2/health/live")) for _ in range(3)}
    assert len(generated) == 3
    for insane in ("has space", "x" * 200, "semi;colon"):
        got = request_id(client.get("/v2/health/live", headers={"x-request-id": insane}))
        assert got
        assert got != insane
    assert request_id(client.get("/nope"), 404)
    assert request_id(client.post("/v2/models/nope/infer", json=infer_body()), 404)


# ----- deadlines and the queue ------------------------------------------------------------------


def outcome_count(client: TestClient, model: str, code: str, outcome: str) -> float:
    labels = f'code="{code}",dialect="v2",model="{model}",outcome="{outcome}",version="1"'
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"tandem_requests_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_timeout_header_gives_504(client: TestClient) -> None:
    response = client.post("/v2/models/slow/infer", json=infer_body(), headers={"X-Request-Timeout-Ms": "50"})
    assert_e1(response, 504, "deadline")
    assert outcome_count(client, "slow", "504", "deadline") == 1
    response = client.post("/v2/models/slow/infer", json=infer_body(), headers={"X-Request-Timeout-Ms": "zero"})
    assert_e1(response, 400, "x-request-timeout-ms")


def test_the_v2_timeout_parameter_in_microseconds_gives_504(client: TestClient) -> None:
    response = client.post("/v2/models/slow/infer", json=infer_body(parameters={"timeout": 50_000}))
    assert_e1(response, 504, "deadline")


def test_a_generous_timeout_lets_the_request_finish(client: TestClient) -> None:
    response = client.post("/v2/models/slow/infer", json=infer_body(), headers={"X-Request-Timeout-Ms": "5000"})
    assert response.status_code == 200


def test_a_full_queue_is_503_with_retry_after(client: TestClient) -> None:
    def call(_: int) -> Any:
        return client.post("/v2/models/slow/infer", json=infer_body())

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(call, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2  # one running, one queued
    assert 503 in codes
    assert set(codes) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert_e1(refused, 503, "queue is full")
    assert int(refused.headers["retry-after"]) >= 1
    assert outcome_count(client, "slow", "503", "queue_full") == codes.count(503)


def test_a_request_queued_past_queue_timeout_is_503_with_retry_after(client: TestClient) -> None:
    def call(_: int) -> Any:
        return client.post("/v2/models/queued/infer", json=infer_body())

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(call, range(2)))
    assert sorted(r.status_code for r in responses) == [200, 503]
    refused = next(r for r in responses if r.status_code == 503)
    assert_e1(refused, 503, "queue timeout")
    assert int(refused.headers["retry-after"]) >= 1
    assert outcome_count(client, "queued", "503", "queue_timeout") == 1


# ----- metrics ----------------------------------------------------------------------------------

METRIC_NAMES = [
    "tandem_requests_total",
    "tandem_request_duration_seconds_bucket",
    "tandem_queue_duration_seconds_bucket",
    "tandem_compute_duration_seconds_bucket",
    "tandem_batch_rows_bucket",
    "tandem_inference_rows_total",
    "tandem_batches_total",
    "tandem_queue_requests",
    "tandem_inflight_batches",
    "tandem_model_ready",
    "tandem_model_loads_total",
    "tandem_model_load_duration_seconds_bucket",
    "tandem_request_body_bytes_bucket",
    "tandem_build_info",
]


def test_metrics_expose_the_protocol_names_with_bounded_labels(client: TestClient) -> None:
    assert client.post("/v2/models/m/infer", json=infer_body()).status_code == 200
    assert client.post("/v2/models/m/infer", json={"inputs": []}).status_code == 400
    assert client.post("/v2/models/random-name-1/infer", json=infer_body()).status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in METRIC_NAMES:
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    ok = 'tandem_requests_total{code="200",dialect="v2",model="m",outcome="ok",version="2"} 1.0'
    assert ok in text
    assert 'code="400",dialect="v2",model="m",outcome="bad_request",version="2"' in text
    assert 'code="404",dialect="v2",model="",outcome="not_found",version=""' in text
    assert "random-name-1" not in text
    assert 'tandem_model_ready{device="cpu",format="onnx",model="m",version="1"} 1.0' in text
