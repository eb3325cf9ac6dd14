"""V2 repository and statistics extensions against real servers, over plain HTTP and through tritonclient."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.api.bodies import JSON, error_e1
from tests.api.conftest import AUTH, Server
from tests.api.models import mlp


def ok(response: httpx.Response) -> object:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON
    return response.json()


def empty_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.content == b""


def infer(http: httpx.Client, model: str, rows: list[list[float]], version: str = "1") -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}]}
    return http.post(f"/v2/models/{model}/versions/{version}/infer", json=body)


# ----- index -------------------------------------------------------------------------------------------


def test_index_lists_every_version_sorted_with_reasons(client: httpx.Client) -> None:
    index = ok(client.post("/v2/repository/index"))
    assert [(e["name"], e["version"], e["state"]) for e in index] == [
        ("badconfig", "", "UNAVAILABLE"),
        ("broken", "1", "UNAVAILABLE"),
        ("echo", "1", "READY"),
        ("fixed", "1", "READY"),
        ("mlp", "1", "READY"),
        ("mlp", "2", "READY"),
        ("pair", "1", "READY"),
    ]
    assert index[0]["reason"] == "model.json: bogus: Extra inputs are not permitted"
    assert index[1]["reason"].startswith("load failed: not a loadable ONNX model")
    assert all("reason" not in e for e in index if e["state"] == "READY")


@pytest.mark.parametrize("content", [b"", b"{}", b'{"ready": false}', b"  "])
def test_index_bodies_that_mean_everything(client: httpx.Client, content: bytes) -> None:
    assert len(ok(client.post("/v2/repository/index", content=content))) == 7


def test_index_of_ready_models_only(client: httpx.Client) -> None:
    index = ok(client.post("/v2/repository/index", json={"ready": True}))
    assert [(e["name"], e["version"]) for e in index] == [
        ("echo", "1"),
        ("fixed", "1"),
        ("mlp", "1"),
        ("mlp", "2"),
        ("pair", "1"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"ready": "yes"}', "'ready' must be true or false"),
        (b"[true]", "request body must be a JSON object"),
        (b"{", "malformed JSON"),
    ],
)
def test_bad_index_bodies_are_400(client: httpx.Client, content: bytes, message: str) -> None:
    assert error_e1(client.post("/v2/repository/index", content=content), 400).startswith(message)


def test_index_needs_post(client: httpx.Client) -> None:
    response = client.get("/v2/repository/index")
    assert error_e1(response, 405) == "method GET not allowed for /v2/repository/index"
    assert response.headers["allow"] == "POST"


# ----- statistics ----------------------------------------------------------------------------------------

TIMERS = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"]


def batches_by_size(stats: dict[str, Any]) -> dict[int, int]:
    """How many batches of each size a model version has run, from its batch_stats."""
    return {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}


def test_statistics_count_rows_batches_and_outcomes(client: httpx.Client) -> None:
    [before] = ok(client.get("/v2/models/pair/versions/1/stats"))["model_stats"]
    started_ms = int(time.time() * 1000)
    body = {"inputs": {"a": [[1, 2, 3], [4, 5, 6]], "b": [[1, 2], [3, 4]]}}
    assert client.post("/v1/models/pair:predict", json=body).status_code == 200
    assert client.post("/predictions/pair", json={"a": [1, 2, 3], "b": [1, 2]}).status_code == 200
    assert client.post("/predictions/pair", json={"a": [[1, 2, 3]], "b": [[1, 2], [3, 4]]}).status_code == 400
    [after] = ok(client.get("/v2/models/pair/versions/1/stats"))["model_stats"]
    assert set(after) == {
        "name",
        "version",
        "last_inference",
        "inference_count",
        "execution_count",
        "inference_stats",
        "batch_stats",
        "response_stats",
        "memory_usage",
    }
    assert (after["name"], after["version"]) == ("pair", "1")
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 2
    stats, was = after["inference_stats"], before["inference_stats"]
    assert list(stats) == TIMERS
    assert stats["success"]["count"] - was["success"]["count"] == 2
    assert stats["fail"]["count"] - was["fail"]["count"] == 1
    assert stats["success"]["ns"] > was["success"]["ns"]
    assert stats["compute_infer"]["count"] == after["execution_count"]
    assert after["last_inference"] >= started_ms
    grown = Counter(batches_by_size(after))
    grown.subtract(batches_by_size(before))
    assert +grown == {1: 1, 2: 1}  # this test's one 1-row and one 2-row batch, nothing else
    assert {frozenset(entry) for entry in after["batch_stats"]} == {
        frozenset({"batch_size", "compute_input", "compute_infer", "compute_output"})
    }
    assert (after["response_stats"], after["memory_usage"]) == ({}, [])


def test_statistics_of_every_model_or_every_version(client: httpx.Client) -> None:
    everything = ok(client.get("/v2/models/stats"))["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [
        ("broken", "1"),
        ("echo", "1"),
        ("fixed", "1"),
        ("mlp", "1"),
        ("mlp", "2"),
        ("pair", "1"),
    ]
    assert [s["version"] for s in ok(client.get("/v2/models/mlp/stats"))["model_stats"]] == ["1", "2"]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope/stats", 404, "model 'nope' not found"),
        ("/v2/models/mlp/versions/9/stats", 404, "model 'mlp' has no version 9"),
        ("/v2/models/mlp/versions/x/stats", 404, "model 'mlp' has no version 'x'"),
        ("/v2/models/-x/stats", 400, "model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"),
    ],
)
def test_statistics_errors(client: httpx.Client, path: str, status: int, message: str) -> None:
    assert error_e1(client.get(path), status) == message


# ----- load and unload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_and_unload_are_403_while_control_is_off(client: httpx.Client, action: str) -> None:
    response = client.post(f"/v2/repository/models/mlp/{action}", headers=AUTH)
    assert "model control is disabled" in error_e1(response, 403)


@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_and_unload_need_the_token(control_server: Server, action: str) -> None:
    with control_server.client(headers={"Authorization": "Bearer nope"}) as http:
        response = http.post(f"/v2/repository/models/mlp/{action}")
    assert error_e1(response, 401) == "missing or invalid bearer token"
    assert response.headers["www-authenticate"] == "Bearer"


def test_load_serves_a_new_model_and_unload_retires_it(control_server: Server, admin: httpx.Client) -> None:
    mlp(control_server.repo / "v2_new" / "4" / "model.onnx", 4)
    error_e1(infer(admin, "v2_new", [[1, 1, 1, 1]], "4"), 404)
    empty_ok(admin.post("/v2/repository/models/v2_new/load"))
    assert infer(admin, "v2_new", [[1, 1, 1, 1]], "4").json()["outputs"][0]["data"] == [16.0, -16.0]
    entries = [e for e in ok(admin.post("/v2/repository/index")) if e["name"] == "v2_new"]
    assert entries == [{"name": "v2_new", "version": "4", "state": "READY"}]
    empty_ok(admin.post("/v2/repository/models/v2_new/unload", json={"parameters": {"unload_dependents": False}}))
    assert error_e1(infer(admin, "v2_new", [[1, 1, 1, 1]], "4"), 404) == "model 'v2_new' not found"
    entries = [e for e in ok(admin.post("/v2/repository/index")) if e["name"] == "v2_new"]
    assert entries == [{"name": "v2_new", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
    empty_ok(admin.post("/v2/repository/models/v2_new/unload"))
    empty_ok(admin.post("/v2/repository/models/v2_new/load", content=b"{}"))
    assert infer(admin, "v2_new", [[1, 1, 1, 1]], "4").status_code == 200


def test_load_failures(control_server: Server, admin: httpx.Client) -> None:
    assert (
        error_e1(admin.post("/v2/repository/models/absent/load"), 404) == "model 'absent' not found in the repository"
    )
    (control_server.repo / "v2_broken" / "1").mkdir(parents=True)
    (control_server.repo / "v2_broken" / "1" / "model.onnx").write_bytes(b"junk")
    message = error_e1(admin.post("/v2/repository/models/v2_broken/load"), 400)
    assert message.startswith("failed to load model 'v2_broken': load failed: not a loadable ONNX model")
    (control_server.repo / "v2_badjson").mkdir()
    (control_server.repo / "v2_badjson" / "model.json").write_text(json.dumps({"max_batch_size": -4}))
    message = error_e1(admin.post("/v2/repository/models/v2_badjson/load"), 400)
    assert message.startswith("failed to load model 'v2_badjson': model.json: max_batch_size:")
    for name in ("v2_broken", "v2_badjson"):  # a failed model would leave the server not ready
        empty_ok(admin.post(f"/v2/repository/models/{name}/unload"))
    entries = [e for e in ok(admin.post("/v2/repository/index")) if e["name"] == "v2_broken"]
    assert entries == [{"name": "v2_broken", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"parameters": {"config": "{}"}},
            "config overrides and file uploads are not supported: load from the repository",
        ),
        (
            {"parameters": {"file:1/model.onnx": "AAAA"}},
            "config overrides and file uploads are not supported: load from the repository",
        ),
        ({"parameters": []}, "'parameters' must be an object"),
        ([1], "request body must be a JSON object"),
    ],
)
def test_load_refuses_uploads_and_bad_bodies(admin: httpx.Client, body: object, message: str) -> None:
    assert error_e1(admin.post("/v2/repository/models/mlp/load", json=body), 400) == message


def test_unload_errors(admin: httpx.Client) -> None:
    assert error_e1(admin.post("/v2/repository/models/absent/unload"), 404) == "model 'absent' not found"
    body = {"parameters": {"unload_dependents": "yes"}}
    assert error_e1(admin.post("/v2/repository/models/mlp/unload", json=body), 400).startswith("parameter 'unload")
    assert error_e1(admin.post("/v2/repository/models/-x/load"), 400).startswith("model name must match")


# ----- tritonclient -----------------------------------------------------------------------------------------


def test_tritonclient_repository_and_statistics(control_server: Server) -> None:
    from tritonclient.http import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    mlp(control_server.repo / "triton_new" / "1" / "model.onnx", 1)
    triton = InferenceServerClient(url=f"127.0.0.1:{control_server.port}")
    try:
        names = {(e["name"], e.get("state")) for e in triton.get_model_repository_index()}
        assert ("triton_new", "UNAVAILABLE") in names
        assert ("mlp", "READY") in names
        triton.load_model("triton_new", headers=AUTH)
        assert triton.is_model_ready("triton_new")
        stats = triton.get_inference_statistics(model_name="triton_new")
        assert [(s["name"], s["version"], s["inference_count"]) for s in stats["model_stats"]] == [
            ("triton_new", "1", 0)
        ]
        assert "model_stats" in triton.get_inference_statistics()
        assert triton.get_inference_statistics("mlp", "2")["model_stats"][0]["version"] == "2"
        triton.unload_model("triton_new", headers=AUTH)
        assert not triton.is_model_ready("triton_new")
        with pytest.raises(InferenceServerException) as raised:
            triton.load_model("triton_new")
        assert raised.value.status() == "401"
        assert "missing or invalid bearer token" in raised.value.message()
        with pytest.raises(InferenceServerException) as raised:
            triton.get_inference_statistics("nope")
        assert raised.value.status() == "404"
    finally:
        triton.close()
