"""TF Serving REST against a real server: status, metadata, :predict in both formats, and every error path."""

from __future__ import annotations

import base64
import gzip

import httpx
import pytest

from tests.api.bodies import error_e1, ok, sample


def available(version: str) -> dict[str, object]:
    return {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


# ----- model list and status -------------------------------------------------------------------------


def test_kserve_v1_liveness(client: httpx.Client) -> None:
    assert ok(client.get("/")) == {"status": "alive"}


def test_list_models(client: httpx.Client) -> None:
    assert ok(client.get("/v1/models")) == {"models": ["badconfig", "broken", "echo", "fixed", "mlp", "pair"]}


def test_status_lists_every_version_highest_first(client: httpx.Client) -> None:
    body = ok(client.get("/v1/models/mlp"))
    assert body == {"name": "mlp", "ready": True, "model_version_status": [available("2"), available("1")]}


@pytest.mark.parametrize(
    ("path", "version"),
    [("/v1/models/mlp/versions/1", "1"), ("/v1/models/mlp/labels/stable", "1"), ("/v1/models/mlp/labels/canary", "2")],
)
def test_status_narrowed_to_one_version(client: httpx.Client, path: str, version: str) -> None:
    assert ok(client.get(path)) == {"name": "mlp", "ready": True, "model_version_status": [available(version)]}


def test_status_of_a_failed_model_is_end_with_a_sanitised_reason(client: httpx.Client) -> None:
    body = ok(client.get("/v1/models/broken"))
    assert body["ready"] is False
    [entry] = body["model_version_status"]
    assert entry["version"] == "1"
    assert entry["state"] == "END"
    assert entry["status"]["error_code"] == "UNKNOWN"
    assert entry["status"]["error_message"].startswith("load failed: ")
    assert "/" not in entry["status"]["error_message"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/models/nope", "model 'nope' not found"),
        ("/v1/models/MLP", "model 'MLP' not found"),
        ("/v1/models/mlp/versions/9", "model 'mlp' has no version 9"),
        ("/v1/models/mlp/versions/0", "model 'mlp' has no version '0'"),
        ("/v1/models/mlp/versions/01", "model 'mlp' has no version '01'"),
        ("/v1/models/mlp/versions/99999999999999999999", "model 'mlp' has no version '99999999999999999999'"),
        ("/v1/models/mlp/labels/nope", "model 'mlp' has no label 'nope'"),
        ("/v1/models/mlp/labels/STABLE", "model 'mlp' has no label 'STABLE'"),
        ("/v1/models/nope/labels/stable", "model 'nope' not found"),
    ],
)
def test_unknown_model_version_or_label_is_404(client: httpx.Client, path: str, message: str) -> None:
    assert error_e1(client.get(path), 404) == message
    assert error_e1(client.post(f"{path}:predict", json={"instances": [[1, 2, 3, 4]]}), 404) == message


@pytest.mark.parametrize(
    "path",
    [
        "/v1",
        "/v1/",
        "/v1/modelz",
        "/v1/models/",
        "/v1/models/mlp/",
        "/v1/models/mlp/extra",
        "/v1/models/mlp/versions/x",
        "/v1/models/mlp/versions/",
        "/v1/models/mlp/versions/1/labels/stable",
        "/v1/models/mlp/labels/stable/versions/1",
        "/v1/models/mlp/metadata/extra",
    ],
)
def test_malformed_paths_get_400(client: httpx.Client, path: str) -> None:
    assert error_e1(client.get(path), 400) == f"Malformed request: GET {path if path != '/v1' else '/v1/'}"


@pytest.mark.parametrize("path", ["/v1/models/mlp:frobnicate", "/v1/models:predict", "/v1/models/mlp:predict:predict"])
def test_malformed_verbs_get_400(client: httpx.Client, path: str) -> None:
    assert error_e1(client.post(path, json={}), 400) == f"Malformed request: POST {path}"


@pytest.mark.parametrize("path", ["/v1/models/-mlp", "/v1/models/.hidden", "/v1/models/a%00b:predict"])
def test_invalid_model_names_get_400(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={}) if path.endswith(":predict") else client.get(path)
    assert error_e1(response, 400) == "model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"


def test_invalid_label_gets_400(client: httpx.Client) -> None:
    assert error_e1(client.get("/v1/models/mlp/labels/st-able"), 400) == "label must match [A-Za-z0-9_]+"


def test_fixed_words_are_case_insensitive(client: httpx.Client) -> None:
    assert ok(client.get("/V1/MODELS/mlp/VERSIONS/1"))["model_version_status"] == [available("1")]
    assert ok(client.get("/v1/Models/mlp/Labels/canary/MetaData"))["model_spec"]["version"] == "2"
    response = client.post("/V1/models/mlp:PREDICT", json={"instances": [[1, 1, 1, 1]]})
    assert ok(response) == {"predictions": [[8.0, -8.0]]}


def test_wrong_method_gets_405_with_allow(client: httpx.Client) -> None:
    response = client.get("/v1/models/mlp:predict")
    assert error_e1(response, 405) == "method GET not allowed here; use POST"
    assert response.headers["allow"] == "POST"
    response = client.post("/v1/models/mlp", json={})
    assert error_e1(response, 405) == "method POST not allowed here; use GET"
    assert response.headers["allow"] == "GET"
    assert error_e1(client.delete("/v1/models"), 405) == "method DELETE not allowed here; use GET"


# ----- metadata ------------------------------------------------------------------------------------------


def _tensor(name: str, dtype: str, dims: list[str]) -> dict[str, object]:
    shape = {"dim": [{"size": d, "name": ""} for d in dims], "unknown_rank": False}
    return {"dtype": dtype, "name": name, "tensor_shape": shape}


def test_metadata_is_a_doubly_nested_signature_def_with_string_int64s(client: httpx.Client) -> None:
    response = client.get("/v1/models/mlp/versions/1/metadata")
    assert response.headers["x-model-version"] == "1"
    signature = {
        "inputs": {"x": _tensor("x", "DT_FLOAT", ["-1", "4"])},
        "outputs": {"y": _tensor("y", "DT_FLOAT", ["-1", "2"])},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert ok(response) == {
        "model_spec": {"name": "mlp", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
    }


def test_metadata_of_a_multi_io_model_and_default_version(client: httpx.Client) -> None:
    signature = ok(client.get("/v1/models/pair/metadata"))["metadata"]["signature_def"]["signature_def"]
    assert signature["serving_default"]["inputs"] == {
        "a": _tensor("a", "DT_FLOAT", ["-1", "3"]),
        "b": _tensor("b", "DT_INT64", ["-1", "2"]),
    }
    assert signature["serving_default"]["outputs"]["t"] == _tensor("t", "DT_INT64", ["-1", "2"])
    assert ok(client.get("/v1/models/mlp/metadata"))["model_spec"]["version"] == "2"
    strings = ok(client.get("/v1/models/echo/metadata"))["metadata"]["signature_def"]["signature_def"]
    assert strings["serving_default"]["inputs"]["s"]["dtype"] == "DT_STRING"


def test_metadata_of_a_failed_model_is_503(client: httpx.Client) -> None:
    assert "has no ready version" in error_e1(client.get("/v1/models/broken/metadata"), 503)


# ----- predict -----------------------------------------------------------------------------------------------


def test_predict_row_format(client: httpx.Client) -> None:
    response = client.post("/v1/models/mlp:predict", json={"instances": [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]})
    assert response.headers["x-model-version"] == "2"
    body = ok(response)
    assert body == {"predictions": [[pytest.approx(2.0), pytest.approx(-2.0)], [20.0, -20.0]]}


def test_predict_columnar_format(client: httpx.Client) -> None:
    response = client.post("/v1/models/mlp/versions/1:predict", json={"inputs": {"x": [[1, 1, 1, 1]]}})
    assert response.headers["x-model-version"] == "1"
    assert ok(response) == {"outputs": [[4.0, -4.0]]}
    assert ok(client.post("/v1/models/mlp/versions/1:predict", json={"inputs": [[1, 1, 1, 1]]})) == {
        "outputs": [[4.0, -4.0]]
    }


def test_predict_by_label_and_named_instances(client: httpx.Client) -> None:
    response = client.post("/v1/models/mlp/labels/stable:predict", json={"instances": [{"x": [1, 1, 1, 1]}]})
    assert response.headers["x-model-version"] == "1"
    assert ok(response) == {"predictions": [[4.0, -4.0]]}


def test_predict_signature_name(client: httpx.Client) -> None:
    body = {"signature_name": "serving_default", "instances": [[1, 1, 1, 1]]}
    assert ok(client.post("/v1/models/mlp:predict", json=body)) == {"predictions": [[8.0, -8.0]]}
    body["signature_name"] = "classify_x"
    message = error_e1(client.post("/v1/models/mlp:predict", json=body), 400)
    assert message == "model 'mlp' version 2: unknown signature 'classify_x'; this model serves 'serving_default'"
    body["signature_name"] = 3
    assert error_e1(client.post("/v1/models/mlp:predict", json=body), 400) == "'signature_name' must be a string"


def test_predict_multi_io_row_format_gives_one_object_per_instance(client: httpx.Client) -> None:
    body = {"instances": [{"a": [1, 2, 3], "b": [1, 2]}, {"a": [0, 0, 1], "b": [-1, 9]}]}
    assert ok(client.post("/v1/models/pair:predict", json=body)) == {
        "predictions": [{"s": [2.0, 4.0, 6.0], "t": [2, 3]}, {"s": [0.0, 0.0, 2.0], "t": [0, 10]}]
    }


def test_predict_multi_io_columnar_format(client: httpx.Client) -> None:
    body = {"inputs": {"a": [[1, 2, 3]], "b": [[1, 2]]}}
    assert ok(client.post("/v1/models/pair:predict", json=body)) == {"outputs": {"s": [[2.0, 4.0, 6.0]], "t": [[2, 3]]}}


def test_predict_strings_and_b64(client: httpx.Client) -> None:
    raw = bytes([0, 1, 2])
    body = {"instances": ["héllo", {"b64": base64.b64encode(raw).decode()}]}
    assert ok(client.post("/v1/models/echo:predict", json=body)) == {
        "predictions": [
            {"text": "héllo", "key_bytes": {"b64": base64.b64encode("héllo".encode()).decode()}},
            {"text": "\x00\x01\x02", "key_bytes": {"b64": "AAEC"}},
        ]
    }
    assert ok(client.post("/v1/models/echo:predict", json={"inputs": ["a"]})) == {
        "outputs": {"text": ["a"], "key_bytes": [{"b64": "YQ=="}]}
    }


def test_row_format_needs_batch_major_outputs(client: httpx.Client) -> None:
    message = error_e1(client.post("/v1/models/fixed:predict", json={"instances": [1, 2, 3]}), 400)
    assert "output 'y' has shape [1]" in message
    assert "columnar format ('inputs')" in message
    assert ok(client.post("/v1/models/fixed:predict", json={"inputs": [1, 2, 3]})) == {"outputs": [6.0]}


def test_non_finite_floats_come_back_as_null(client: httpx.Client) -> None:
    response = client.post("/v1/models/mlp:predict", content=b'{"instances": [[NaN, 1, 1, 1], [Infinity, 0, 0, 0]]}')
    assert ok(response) == {"predictions": [[None, None], [None, None]]}


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        ("mlp", {"instances": [[1, 2, 3, 4]], "inputs": [[1]]}, "expecting only one of 'inputs' or 'instances'"),
        ("mlp", {"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
        ("mlp", [1, 2], "request body must be a JSON object"),
        ("mlp", {"instances": []}, "'instances' must be a non-empty list"),
        ("mlp", {"instances": {"x": [1, 2, 3, 4]}}, "'instances' must be a non-empty list"),
        ("mlp", {"instances": [[1, 2, 3]]}, "model 'mlp' version 2: input 'x' expects shape [-1, 4], got [1, 3]"),
        ("mlp", {"instances": [[1, 2, 3, 4], [1, 2]]}, "input 'x': data is not a rectangular array"),
        ("mlp", {"instances": [[1, 2, 3, "x"]]}, "input 'x': expected numbers for FP32, got strings"),
        ("mlp", {"instances": [[True, False, True, False]]}, "input 'x': expected numbers for FP32"),
        ("mlp", {"instances": [{"z": [1, 2, 3, 4]}]}, "instances[0]: missing input(s) ['x'], unknown input(s) ['z']"),
        ("mlp", {"inputs": {"x": [[1, 2, 3, 4]], "z": 1}}, "'inputs': unknown input(s) ['z']; expected ['x']"),
        ("pair", {"instances": [[1, 2]]}, "each instance must be an object {input: value}"),
        ("pair", {"inputs": [[1, 2]]}, "'inputs' must be an object {input: tensor}"),
        ("pair", {"instances": [{"a": [1, 2, 3], "b": [1, 2]}, [1]]}, "instances[1] must be an object like"),
        ("pair", {"instances": [{"a": [1, 2, 3], "b": [1.5, 2]}]}, "input 'b': expected integer values for INT64"),
        ("pair", {"instances": [{"a": [1, 2, 3], "b": [2**63, 2]}]}, "input 'b': value out of range for INT64"),
        ("pair", {"inputs": {"a": [[1, 2, 3]], "b": [[1, 2], [3, 4]]}}, "inputs disagree on batch size"),
        ("echo", {"instances": [{"b64": "!!"}]}, "input 's': 'b64' value is not valid base64"),
        ("echo", {"instances": [5]}, "input 's': DT_STRING elements must be strings or {\"b64\": ...}, got int"),
    ],
)
def test_bad_predict_bodies_get_400(client: httpx.Client, model: str, body: object, expected: str) -> None:
    assert expected in error_e1(client.post(f"/v1/models/{model}:predict", json=body), 400)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "request body is empty; expected JSON"), (b"{", "malformed JSON"), (b"\xff", "malformed JSON")],
)
def test_malformed_json_gets_400(client: httpx.Client, content: bytes, expected: str) -> None:
    assert error_e1(client.post("/v1/models/mlp:predict", content=content), 400).startswith(expected)


@pytest.mark.parametrize("verb", ["classify", "regress", "CLASSIFY"])
def test_classify_and_regress_are_501(client: httpx.Client, verb: str) -> None:
    expected = f":{verb.lower()} is not supported; use :predict"
    assert error_e1(client.post(f"/v1/models/mlp:{verb}", json={"examples": []}), 501) == expected


def test_predict_on_a_failed_model_is_503(client: httpx.Client) -> None:
    response = client.post("/v1/models/broken:predict", json={"instances": [[1, 2, 3, 4]]})
    assert "has no ready version" in error_e1(response, 503)
    assert response.headers["retry-after"] == "1"
    assert error_e1(client.post("/v1/models/broken/versions/1:predict", json={"instances": [[1]]}), 503)


def test_body_limits_and_encodings(client: httpx.Client) -> None:
    big = b'{"instances": [' + b"[1, 2, 3, 4], " * 6000 + b"[1, 2, 3, 4]]}"
    assert "exceeds max_body_bytes" in error_e1(client.post("/v1/models/mlp:predict", content=big), 413)
    packed = gzip.compress(b'{"instances": [[1, 2, 3, 4]]}')
    response = client.post("/v1/models/mlp:predict", content=packed, headers={"content-encoding": "gzip"})
    assert error_e1(response, 415) == "Content-Encoding 'gzip' is not supported"


def test_predictions_are_counted_under_the_tfserving_dialect(client: httpx.Client) -> None:
    labels = {"dialect": "tfserving", "model": "mlp", "version": "1"}
    counted = {"200": {**labels, "code": "200", "outcome": "ok"}}
    counted["400"] = {**labels, "code": "400", "outcome": "bad_request"}
    before = {code: sample(client, "tandem_requests_total", **each) for code, each in counted.items()}
    response = client.post("/v1/models/mlp/versions/1:predict", json={"instances": [[1, 1, 1, 1]]})
    assert ok(response) == {"predictions": [[4.0, -4.0]]}
    response = client.post("/v1/models/mlp/versions/1:predict", json={"instances": [[1, 1, 1]]})
    assert "expects shape [-1, 4], got [1, 3]" in error_e1(response, 400)
    after = {code: sample(client, "tandem_requests_total", **each) for code, each in counted.items()}
    assert {code: after[code] - before[code] for code in counted} == {"200": 1, "400": 1}
