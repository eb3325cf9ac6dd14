"""TorchServe inference against a real server: /ping, /predictions by Content-Type and the rank rule, E2 errors."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.api.bodies import JSON, error, ok, sample
from tests.api.models import mlp


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_ping_is_unhealthy_while_a_model_is_not_ready(client: httpx.Client) -> None:
    response = client.get("/ping")
    assert response.status_code == 503
    assert response.json() == {"status": "Unhealthy"}


def test_ping_is_healthy_when_every_model_is_ready(tmp_path: Path) -> None:
    """In process, over a repository of its own whose one model loads."""
    mlp(tmp_path / "mlp" / "1" / "model.onnx", 1)
    with TestClient(create_app(Settings(models_dir=tmp_path, warmup=False))) as http:
        assert ok(http.get("/ping")) == {"status": "Healthy"}


# ----- JSON bodies and the rank rule -------------------------------------------------------------------


def test_one_instance_loses_its_batch_dim(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp", json=[0.5, 0.5, 0.5, 0.5])
    assert response.headers["x-model-version"] == "2"
    assert ok(response) == [4.0, -4.0]


def test_a_batch_is_answered_as_a_batch(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp/1", json=[[0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4]])
    assert response.headers["x-model-version"] == "1"
    assert ok(response) == [[2.0, -2.0], [10.0, -10.0]]


def test_content_type_parameters_and_json_suffix_are_json(client: httpx.Client) -> None:
    content = b"[1, 1, 1, 1]"
    for media in ("application/json; charset=utf-8", "application/vnd.api+json", "Application/JSON"):
        response = client.post("/predictions/mlp/1", content=content, headers={"content-type": media})
        assert ok(response) == [4.0, -4.0]


def test_multi_input_model_takes_an_object(client: httpx.Client) -> None:
    assert ok(client.post("/predictions/pair", json={"a": [1, 2, 3], "b": [1, 2]})) == {
        "s": [2.0, 4.0, 6.0],
        "t": [2, 3],
    }
    assert ok(client.post("/predictions/pair", json={"a": [[1, 2, 3]], "b": [[1, 2]]})) == {
        "s": [[2.0, 4.0, 6.0]],
        "t": [[2, 3]],
    }


def test_single_input_model_also_takes_its_input_by_name(client: httpx.Client) -> None:
    assert ok(client.post("/predictions/mlp/1", json={"x": [1, 1, 1, 1]})) == [4.0, -4.0]


def test_strings_follow_the_tf_serving_rules(client: httpx.Client) -> None:
    assert ok(client.post("/predictions/echo", json="hi")) == {"text": "hi", "key_bytes": {"b64": "aGk="}}
    assert ok(client.post("/predictions/echo", json=["a", {"b64": "Yg=="}])) == {
        "text": ["a", "b"],
        "key_bytes": [{"b64": "YQ=="}, {"b64": "Yg=="}],
    }


def test_model_without_batch_dim(client: httpx.Client) -> None:
    assert ok(client.post("/predictions/fixed", json=[1, 2, 3])) == [6.0]


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        ("mlp", 1.5, "input 'x' takes rank 2 (a batch) or 1 (one instance), got shape []"),
        ("mlp", [[[1, 2, 3, 4]]], "input 'x' takes rank 2 (a batch) or 1 (one instance), got shape [1, 1, 4]"),
        ("mlp", [1, 2, 3], "input 'x' expects shape [-1, 4], got [1, 3]"),
        ("mlp", ["a", "b", "c", "d"], "input 'x': expected numbers for FP32, got strings"),
        ("mlp", {"x": [1, 2, 3, 4], "z": 1}, "unknown input(s) ['z']; expected ['x']"),
        ("pair", [1, 2, 3], "has inputs ['a', 'b']: send a JSON object {input: value}"),
        ("pair", {"a": [1, 2, 3]}, "missing input(s) ['b']; expected ['a', 'b']"),
        ("pair", {"a": [1, 2, 3], "b": [[1, 2]]}, "inputs mix single instances and batches"),
        ("pair", {"a": [1, 2, 3], "b": [1.5, 2]}, "input 'b': expected integer values for INT64"),
    ],
)
def test_bad_json_bodies_get_400(client: httpx.Client, model: str, body: object, expected: str) -> None:
    assert expected in error(client.post(f"/predictions/{model}", json=body), 400, "BadRequestException")


def test_malformed_json_gets_400(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp", content=b"[1, 2", headers={"content-type": JSON})
    assert error(response, 400, "BadRequestException").startswith("malformed JSON")


# ----- raw and .npy bodies ------------------------------------------------------------------------------


def test_raw_bytes_are_one_little_endian_row(client: httpx.Client) -> None:
    row = np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    for headers in ({"content-type": "application/octet-stream"}, {"content-type": "image/png"}, {}):
        assert ok(client.post("/predictions/mlp/1", content=row, headers=headers)) == [10.0, -10.0]


def test_raw_bytes_fill_a_model_without_batch_dim(client: httpx.Client) -> None:
    body = np.array([1, 2, 3], dtype="<f4").tobytes()
    assert ok(client.post("/predictions/fixed", content=body)) == [6.0]


def test_raw_body_of_the_wrong_length_gets_400(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp", content=b"\0" * 12, headers={"content-type": "application/octet-stream"})
    message = error(response, 400, "BadRequestException")
    assert message == (
        "model 'mlp' version 2: raw body has 12 bytes; one row of input 'x' (FP32 [4], little-endian) is 16 bytes"
    )


def test_raw_body_is_the_one_element_of_a_bytes_input(client: httpx.Client) -> None:
    response = client.post("/predictions/echo", content="héllo".encode(), headers={"content-type": "text/plain"})
    assert ok(response) == {"text": "héllo", "key_bytes": {"b64": "aMOpbGxv"}}


def test_raw_body_for_a_multi_input_model_gets_415(client: httpx.Client) -> None:
    octets = {"content-type": "application/octet-stream"}
    response = client.post("/predictions/pair", content=b"\0" * 20, headers=octets)
    message = error(response, 415, "UnsupportedMediaTypeException")
    assert message == (
        "model 'pair' version 1 has inputs ['a', 'b']; application/octet-stream carries one tensor, "
        "send JSON {input: value} instead"
    )


def test_multipart_gets_415(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp", files={"data": ("x.bin", b"\0" * 16)})
    assert "multipart/form-data bodies are not supported" in error(response, 415, "UnsupportedMediaTypeException")


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.ones((2, 4), dtype="<f4"), [[8.0, -8.0], [8.0, -8.0]]),
        (np.ones((2, 4), dtype=">f4"), [[8.0, -8.0], [8.0, -8.0]]),
        (np.ones(4, dtype="<f4"), [8.0, -8.0]),
        (np.asfortranarray(np.ones((2, 4), dtype="<f4")), [[8.0, -8.0], [8.0, -8.0]]),
    ],
)
def test_npy_bodies_follow_the_rank_rule(client: httpx.Client, array: np.ndarray, expected: object) -> None:
    response = client.post("/predictions/mlp", content=npy(array), headers={"content-type": "application/x-npy"})
    assert ok(response) == expected


def test_npy_strings_feed_a_bytes_input(client: httpx.Client) -> None:
    response = client.post(
        "/predictions/echo", content=npy(np.array(["a", "b"])), headers={"content-type": "application/x-npy"}
    )
    assert ok(response) == {"text": ["a", "b"], "key_bytes": [{"b64": "YQ=="}, {"b64": "Yg=="}]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (npy(np.ones((1, 4), dtype=np.float64)), "input 'x' expects datatype FP32, got FP64"),
        (npy(np.array([{"a": 1}], dtype=object)), "is not a readable .npy array (object arrays are refused)"),
        (b"\x93NUMPY garbage", "is not a readable .npy array"),
        (b"[1, 2, 3, 4]", "body is not a .npy array"),
    ],
)
def test_bad_npy_bodies_get_400(client: httpx.Client, content: bytes, expected: str) -> None:
    response = client.post("/predictions/mlp", content=content, headers={"content-type": "application/x-npy"})
    assert expected in error(response, 400, "BadRequestException")


# ----- lookups, routes and limits ---------------------------------------------------------------------------


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/predictions/nope", json=[1])
    assert error(response, 404, "ModelNotFoundException") == "Model not found: nope"


@pytest.mark.parametrize("version", ["9", "1.0", "0", "01", "latest"])
def test_unknown_version_is_404(client: httpx.Client, version: str) -> None:
    response = client.post(f"/predictions/mlp/{version}", json=[1, 2, 3, 4])
    assert "model 'mlp' has no version" in error(response, 404, "ModelVersionNotFoundException")


def test_extra_segment_is_404(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp/1/extra", json=[1, 2, 3, 4])
    assert error(response, 404, "ResourceNotFoundException") == "no route for POST /predictions/mlp/1/extra"


def test_wrong_method_is_405(client: httpx.Client) -> None:
    response = client.get("/predictions/mlp")
    assert error(response, 405, "MethodNotAllowedException") == "method GET not allowed for /predictions/mlp"
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("name", ["-mlp", ".mlp", "a%00b", "%2e%2e"])
def test_invalid_model_name_is_400(client: httpx.Client, name: str) -> None:
    response = client.post(f"/predictions/{name}", json=[1])
    assert error(response, 400, "BadRequestException") == "model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"


def test_failed_model_is_503(client: httpx.Client) -> None:
    response = client.post("/predictions/broken", json=[1, 2, 3, 4])
    assert "has no ready version" in error(response, 503, "ServiceUnavailableException")


def test_body_too_large_is_413(client: httpx.Client) -> None:
    response = client.post("/predictions/mlp", content=b"\0" * 70000)
    assert "exceeds max_body_bytes" in error(response, 413, "RequestEntityTooLargeException")


def test_predictions_are_counted_under_the_torchserve_dialect(client: httpx.Client) -> None:
    counted = {
        "200": {"dialect": "torchserve", "model": "mlp", "version": "1", "code": "200", "outcome": "ok"},
        "404": {"dialect": "torchserve", "model": "", "version": "", "code": "404", "outcome": "not_found"},
    }
    before = {code: sample(client, "tandem_requests_total", **each) for code, each in counted.items()}
    assert ok(client.post("/predictions/mlp/1", json=[1, 1, 1, 1])) == [4.0, -4.0]
    response = client.post("/predictions/nope", json=[1, 1, 1, 1])
    assert error(response, 404, "ModelNotFoundException") == "Model not found: nope"
    after = {code: sample(client, "tandem_requests_total", **each) for code, each in counted.items()}
    assert {code: after[code] - before[code] for code in counted} == {"200": 1, "404": 1}
