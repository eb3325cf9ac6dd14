"""TorchServe management against real servers: list and describe; register, scale, set-default, unregister."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.api.bodies import error, ok
from tests.api.conftest import AUTH, Server
from tests.api.models import mlp

DESCRIBE_KEYS = {
    "modelName",
    "modelVersion",
    "modelUrl",
    "runtime",
    "minWorkers",
    "maxWorkers",
    "batchSize",
    "maxBatchDelay",
    "responseTimeout",
    "loadedAtStartup",
    "status",
    "workers",
    "jobQueueStatus",
}


def add_model(server: Server, name: str, versions: tuple[int, ...] = (1,)) -> None:
    """Put a new mlp copy into the running server's repository (it is not loaded until asked)."""
    for version in versions:
        mlp(server.repo / name / str(version) / "model.onnx", version)


# ----- list and describe ------------------------------------------------------------------------------


def test_list_is_sorted_and_paginated(client: httpx.Client) -> None:
    def entry(name: str) -> dict[str, str]:
        return {"modelName": name, "modelUrl": name}

    everything = [entry(n) for n in ("badconfig", "broken", "echo", "fixed", "mlp", "pair")]
    assert ok(client.get("/models")) == {"models": everything}
    first = ok(client.get("/models", params={"limit": 2}))
    assert first == {"nextPageToken": "2", "models": everything[:2]}
    assert ok(client.get("/models", params={"limit": 2, "next_page_token": 2})) == {
        "nextPageToken": "4",
        "models": everything[2:4],
    }
    assert ok(client.get("/models", params={"limit": 2, "next_page_token": 4})) == {"models": everything[4:]}
    assert ok(client.get("/models", params={"limit": 0}))["models"] == everything[:1]
    assert ok(client.get("/models", params={"limit": 1000}))["models"] == everything


@pytest.mark.parametrize("params", [{"limit": "two"}, {"next_page_token": "x"}, {"next_page_token": "-1"}])
def test_bad_pagination_is_400(client: httpx.Client, params: dict[str, str]) -> None:
    error(client.get("/models", params=params), 400, "BadRequestException")


def test_describe_the_default_version(client: httpx.Client) -> None:
    [body] = ok(client.get("/models/mlp"))
    assert set(body) == DESCRIBE_KEYS
    assert body["modelName"] == "mlp"
    assert body["modelVersion"] == "2"
    assert body["modelUrl"] == "mlp/2"
    assert body["runtime"] == "onnxruntime"
    assert (body["minWorkers"], body["maxWorkers"], body["batchSize"]) == (1, 1, 64)
    assert (body["maxBatchDelay"], body["responseTimeout"], body["loadedAtStartup"]) == (2, 30, True)
    assert body["status"] == "READY"
    [worker] = body["workers"]
    assert set(worker) == {"id", "startTime", "status", "gpu", "memoryUsage"}
    assert worker["status"] == "READY"
    assert body["jobQueueStatus"] == {"remainingCapacity": 1024, "pendingRequests": 0}


def test_describe_one_version_or_all(client: httpx.Client) -> None:
    assert [d["modelVersion"] for d in ok(client.get("/models/mlp/1"))] == ["1"]
    assert [d["modelVersion"] for d in ok(client.get("/models/mlp/all"))] == ["1", "2"]


def test_describe_a_failed_model(client: httpx.Client) -> None:
    [body] = ok(client.get("/models/broken"))
    assert (body["status"], body["workers"], body["minWorkers"]) == ("UNAVAILABLE", [], 0)


@pytest.mark.parametrize(
    ("path", "status", "kind", "message"),
    [
        ("/models/nope", 404, "ModelNotFoundException", "Model not found: nope"),
        ("/models/nope/all", 404, "ModelNotFoundException", "model 'nope' not found"),
        ("/models/mlp/9", 404, "ModelVersionNotFoundException", "model 'mlp' has no version 9"),
        ("/models/mlp/1.0", 404, "ModelVersionNotFoundException", "model 'mlp' has no version '1.0'"),
        ("/models/-x", 400, "BadRequestException", "model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"),
        ("/models/mlp/1/extra", 404, "ResourceNotFoundException", "no route for GET /models/mlp/1/extra"),
    ],
)
def test_describe_errors(client: httpx.Client, path: str, status: int, kind: str, message: str) -> None:
    assert error(client.get(path), status, kind) == message


# ----- the control gate -----------------------------------------------------------------------------------

CONTROL_CALLS = [
    ("POST", "/models?url=mlp"),
    ("PUT", "/models/mlp?min_worker=1"),
    ("PUT", "/models/mlp/1?min_worker=1"),
    ("PUT", "/models/mlp/1/set-default"),
    ("DELETE", "/models/mlp"),
    ("DELETE", "/models/mlp/1"),
]


@pytest.mark.parametrize(("method", "path"), CONTROL_CALLS)
def test_control_is_403_while_disabled(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path, headers=AUTH)
    assert "model control is disabled" in error(response, 403, "ModelControlDisabledException")


@pytest.mark.parametrize(("method", "path"), CONTROL_CALLS)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic dDBrOg==", "t0k", "Bearer", "bearer t0k0"])
def test_control_needs_the_bearer_token(
    control_server: Server, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with control_server.client(headers=headers) as http:
        response = http.request(method, path)
    assert error(response, 401, "InvalidKeyException") == "missing or invalid bearer token"
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_token_never_reaches_the_log(control_server: Server, admin: httpx.Client) -> None:
    def workers() -> tuple[int, int]:
        [body] = ok(admin.get("/models/mlp/2"))
        return body["minWorkers"], body["maxWorkers"]

    before = workers()
    scale = f"/models/mlp/2?min_worker={before[0]}&max_worker={before[1]}&synchronous=true"
    assert ok(admin.put(scale)) == {"status": f"Workers scaled to {before[0]} for model: mlp, version: 2"}
    assert workers() == before  # scaled to what it was: nothing changed for the other tests
    with control_server.client(headers={"Authorization": "Bearer wrong-guess"}) as http:
        error(http.put(scale), 401, "InvalidKeyException")
    log = control_server.log.read_text()
    assert "t0k" not in log.replace("--admin-token", "")
    assert "wrong-guess" not in log


# ----- register -----------------------------------------------------------------------------------------


def test_register_synchronously(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "reg_sync", (1, 3))
    body = ok(admin.post("/models", params={"url": "reg_sync", "synchronous": "true", "initial_workers": 1}))
    assert body == {"status": 'Model "reg_sync" Version: 3 registered with 1 initial workers'}
    [described] = ok(admin.get("/models/reg_sync"))
    assert (described["modelVersion"], described["loadedAtStartup"]) == ("3", False)
    assert ok(admin.post("/predictions/reg_sync", json=[1, 1, 1, 1])) == [12.0, -12.0]
    response = admin.post("/models", params={"url": "reg_sync", "synchronous": "true"})
    assert error(response, 409, "ConflictStatusException") == 'Model "reg_sync" is already registered'


def test_register_applies_batch_parameters_to_this_load(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "reg_params")
    params = {"url": "reg_params", "batch_size": 8, "max_batch_delay": 5, "initial_workers": 2}
    params |= {"response_timeout": 7, "synchronous": "true"}
    ok(admin.post("/models", params=params))
    [body] = ok(admin.get("/models/reg_params"))
    assert (body["batchSize"], body["maxBatchDelay"], body["minWorkers"], body["responseTimeout"]) == (8, 5, 2, 7)
    assert len(body["workers"]) == 2


def test_register_asynchronously(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "reg_async")
    assert ok(admin.post("/models", params={"url": "reg_async"}), 202) == {"status": "Processing worker updates..."}
    deadline = time.monotonic() + 30
    while admin.get("/models/reg_async").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ok(admin.post("/predictions/reg_async", json=[1, 1, 1, 1])) == [4.0, -4.0]


def test_register_with_zero_workers_pauses_until_scaled(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "reg_zero")
    body = ok(admin.post("/models", params={"url": "reg_zero", "initial_workers": 0, "synchronous": "true"}))
    assert body == {"status": 'Model "reg_zero" Version: 1 registered with 0 initial workers'}
    response = admin.post("/predictions/reg_zero", json=[1, 1, 1, 1])
    assert "paused" in error(response, 503, "ServiceUnavailableException")
    ok(admin.put("/models/reg_zero?min_worker=1&synchronous=true"))
    assert ok(admin.post("/predictions/reg_zero", json=[1, 1, 1, 1])) == [4.0, -4.0]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/mlp.mar",
        "https://example.com/mlp.mar",
        "file:///etc/passwd",
        "/etc/passwd",
        "\\\\host\\share",
        "C:\\models\\mlp",
        "../mlp",
        "..",
        "mlp/..",
        "mlp/1",
        "a\x00b",
        "",
    ],
)
def test_register_refuses_urls_and_paths(admin: httpx.Client, url: str) -> None:
    error(admin.post("/models", params={"url": url}), 400, "BadRequestException")


def test_register_refuses_missing_url_handlers_and_renames(admin: httpx.Client) -> None:
    message = error(admin.post("/models"), 400, "BadRequestException")
    assert message == "parameter 'url' is required: the name of a model directory in the repository"
    for key in ("handler", "runtime", "s3_sse_kms"):
        response = admin.post("/models", params={"url": "mlp", key: "x"})
        assert f"['{key}'] are not supported" in error(response, 400, "BadRequestException")
    response = admin.post("/models", params={"url": "mlp", "model_name": "other"})
    assert "model_name must equal url" in error(response, 400, "BadRequestException")


@pytest.mark.parametrize(
    "params",
    [
        {"batch_size": "-1"},
        {"batch_size": "many"},
        {"max_batch_delay": "10001"},
        {"initial_workers": "65"},
        {"response_timeout": "0"},
        {"synchronous": "maybe"},
    ],
)
def test_register_refuses_bad_parameters(admin: httpx.Client, params: dict[str, str]) -> None:
    error(admin.post("/models", params={"url": "mlp", **params}), 400, "BadRequestException")


def test_register_unknown_or_broken_models(control_server: Server, admin: httpx.Client) -> None:
    response = admin.post("/models", params={"url": "absent", "synchronous": "true"})
    assert error(response, 404, "ModelNotFoundException") == "Model not found in the repository: absent"
    (control_server.repo / "reg_broken" / "1").mkdir(parents=True)
    (control_server.repo / "reg_broken" / "1" / "model.onnx").write_bytes(b"junk")
    response = admin.post("/models", params={"url": "reg_broken", "synchronous": "true"})
    message = error(response, 400, "BadRequestException")
    assert message.startswith("failed to load model 'reg_broken': load failed: not a loadable ONNX model")
    assert str(control_server.repo) not in message
    assert ok(admin.delete("/models/reg_broken")) == {"status": 'Model "reg_broken" unregistered'}


# ----- scale, set-default, unregister ---------------------------------------------------------------------


def test_scale_sets_the_execution_slots(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "scaled", (1, 2))
    ok(admin.post("/models", params={"url": "scaled", "synchronous": "true"}))
    body = ok(admin.put("/models/scaled", params={"min_worker": 3, "max_worker": 3, "synchronous": "true"}))
    assert body == {"status": "Workers scaled to 3 for model: scaled"}
    assert ok(admin.get("/models/scaled"))[0]["minWorkers"] == 3
    body = ok(admin.put("/models/scaled/2", params={"min_worker": 2, "synchronous": "true"}))
    assert body == {"status": "Workers scaled to 2 for model: scaled, version: 2"}
    assert ok(admin.put("/models/scaled/2", params={"min_worker": 1}), 202) == {
        "status": "Processing worker updates..."
    }
    assert ok(admin.get("/models/scaled/2"))[0]["maxWorkers"] == 1


def test_scale_to_zero_pauses_the_model(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "paused")
    ok(admin.post("/models", params={"url": "paused", "synchronous": "true"}))
    ok(admin.put("/models/paused?min_worker=0&synchronous=true"))
    response = admin.post("/predictions/paused", json=[1, 1, 1, 1])
    assert error(response, 503, "ServiceUnavailableException").endswith("is paused")
    ok(admin.put("/models/paused?min_worker=1&synchronous=true"))
    assert ok(admin.post("/predictions/paused", json=[1, 1, 1, 1])) == [4.0, -4.0]


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/models/mlp?min_worker=2&max_worker=1", 400, "BadRequestException"),
        ("/models/mlp?min_worker=65", 400, "BadRequestException"),
        ("/models/mlp?timeout=soon", 400, "BadRequestException"),
        ("/models/nope?min_worker=1", 404, "ModelNotFoundException"),
        ("/models/mlp/7?min_worker=1", 404, "ModelVersionNotFoundException"),
    ],
)
def test_scale_errors(admin: httpx.Client, path: str, status: int, kind: str) -> None:
    error(admin.put(path), status, kind)


def test_set_default_governs_every_dialect(admin: httpx.Client) -> None:
    body = ok(admin.put("/models/multi/1/set-default"))
    assert body == {"status": 'Default version successfully updated for model "multi" to "1"'}
    torchserve = admin.post("/predictions/multi", json=[1, 1, 1, 1])
    assert (ok(torchserve), torchserve.headers["x-model-version"]) == ([4.0, -4.0], "1")
    tfs = admin.post("/v1/models/multi:predict", json={"instances": [[1, 1, 1, 1]]})
    assert (ok(tfs), tfs.headers["x-model-version"]) == ({"predictions": [[4.0, -4.0]]}, "1")
    v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    answer = ok(admin.post("/v2/models/multi/infer", json=v2))
    assert (answer["model_version"], answer["outputs"][0]["data"]) == ("1", [4.0, -4.0])
    assert [d["modelVersion"] for d in ok(admin.get("/models/multi"))] == ["1"]
    assert ok(admin.delete("/models/multi/1")) == {"status": 'Model "multi" unregistered'}
    torchserve = admin.post("/predictions/multi", json=[1, 1, 1, 1])
    assert (ok(torchserve), torchserve.headers["x-model-version"]) == ([8.0, -8.0], "2")


def test_set_default_errors(admin: httpx.Client) -> None:
    error(admin.put("/models/mlp/9/set-default"), 404, "ModelVersionNotFoundException")
    error(admin.put("/models/nope/1/set-default"), 404, "ModelNotFoundException")
    error(admin.get("/models/mlp/1/set-default"), 405, "MethodNotAllowedException")


def test_unregister_the_default_version_then_the_model(control_server: Server, admin: httpx.Client) -> None:
    add_model(control_server, "gone", (1, 2))
    shutil.copy(control_server.repo / "mlp" / "model.json", control_server.repo / "gone" / "model.json")
    ok(admin.post("/models", params={"url": "gone", "synchronous": "true"}))
    assert ok(admin.delete("/models/gone")) == {"status": 'Model "gone" unregistered'}
    assert [d["modelVersion"] for d in ok(admin.get("/models/gone/all"))] == ["1"]
    assert ok(admin.delete("/models/gone/1")) == {"status": 'Model "gone" unregistered'}
    assert error(admin.get("/models/gone"), 404, "ModelNotFoundException") == "Model not found: gone"
    error(admin.delete("/models/gone"), 404, "ModelNotFoundException")
    error(admin.delete("/models/mlp/9"), 404, "ModelVersionNotFoundException")
