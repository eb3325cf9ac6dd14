"""Fuzzed input never gets a 5xx: random and mutated bodies against every dialect's inference routes.

Runs in process against real ONNX Runtime models (a batching doubler and a multi-dtype identity model
with a string input), so runtime-level failures on odd tensors would surface as 500s here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import onnx_doubler, onnx_identity

ROUTES = [
    "/v2/models/double/infer",
    "/v2/models/ident/versions/1/infer",
    "/v1/models/double:predict",
    "/v1/models/ident:predict",
    "/predictions/double",
    "/predictions/ident",
]
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "x"]
NAMES = ["x", "f", "i", "s", "b", "", "y", "x_out"]
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from([*NAMES, "data"]), inner, max_size=4),
    max_leaves=30,
)
dims = st.lists(st.integers(-2, 5) | st.sampled_from([2**31, 2**62, 10**30]), max_size=4)
v2_input = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "datatype": st.sampled_from(DATATYPES), "shape": dims},
    optional={"data": json_value, "parameters": st.dictionaries(st.sampled_from(["binary_data_size"]), json_value)},
)
v2_request = st.fixed_dictionaries(
    {"inputs": st.lists(v2_input, max_size=3)},
    optional={
        "id": json_leaf,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES)}), max_size=3),
        "parameters": st.dictionaries(st.sampled_from(["timeout", "binary_data_output", "sequence_id"]), json_leaf),
    },
)
tfs_request = st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name"]), json_value, max_size=2)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app over a doubler and an identity model of several dtypes, real ONNX Runtime."""
    repo = tmp_path_factory.mktemp("fuzz")
    onnx_doubler(repo / "double" / "1" / "model.onnx")
    types = {"f": TensorProto.FLOAT, "i": TensorProto.INT64, "b": TensorProto.BOOL, "s": TensorProto.STRING}
    onnx_identity(repo / "ident" / "1" / "model.onnx", types, ["batch", 3])
    app = create_app(Settings(models_dir=repo, max_body_bytes=64 * 1024, request_timeout_ms=5000))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def dump(value: Any) -> bytes:
    """stdlib json: ints past 64 bits and NaN/Infinity tokens, which clients may send, survive."""
    return json.dumps(value).encode()


def check(response: Any) -> None:
    """Never a 5xx (bar a full queue, which a serial fuzzer cannot cause) and always a JSON body."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert isinstance(orjson.loads(response.content), dict)


@FUZZ
@given(route=st.sampled_from(ROUTES), body=json_value)
def test_random_json_never_5xx(client: TestClient, route: str, body: Any) -> None:
    check(client.post(route, content=dump(body), headers={"content-type": "application/json"}))


@FUZZ
@given(request=v2_request, binary=st.binary(max_size=64), header_length=st.integers(-1, 400))
def test_structured_v2_requests_never_5xx(client: TestClient, request: Any, binary: bytes, header_length: int) -> None:
    route = "/v2/models/ident/infer" if any(i["name"] in "fisb" for i in request["inputs"]) else ROUTES[0]
    check(client.post(route, content=dump(request)))
    head = dump(request)
    headers = {"inference-header-content-length": str(header_length if header_length >= 0 else len(head))}
    check(client.post(route, content=head + binary, headers=headers))


@FUZZ
@given(route=st.sampled_from(ROUTES[2:4]), request=tfs_request)
def test_structured_tfserving_requests_never_5xx(client: TestClient, route: str, request: Any) -> None:
    check(client.post(route, content=dump(request)))


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    body=st.binary(max_size=256),
    content_type=st.sampled_from(["application/json", "application/octet-stream", "application/x-npy", "text/plain"]),
    encoding=st.sampled_from(["", "gzip", "deflate", "br", "identity"]),
)
def test_random_bytes_and_headers_never_5xx(
    client: TestClient, route: str, body: bytes, content_type: str, encoding: str
) -> None:
    headers = {"content-type": content_type}
    if encoding:
        headers["content-encoding"] = encoding
    check(client.post(route, content=body, headers=headers))


def test_check_rejects_a_5xx_and_accepts_a_named_4xx(client: TestClient) -> None:
    """The oracle can fail: a 500 is rejected; a real malformed request gets a 400 it accepts."""
    with pytest.raises(AssertionError):
        check(SimpleNamespace(status_code=500, text="internal error", content=b"{}"))
    response = client.post(ROUTES[0], content=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}')
    check(response)
    assert response.status_code == 400
    assert "data" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/stats?name=double&version=%C2%B2"),  # "²": str.isdigit() says yes, int() says no
        ("GET", "/v2/models/double/versions/%C2%B2"),
        ("GET", "/v2/models/double/versions/%D9%A3/stats"),  # Arabic-Indic three
        ("POST", "/v2/models/double/versions/%C2%B2/infer"),
        ("GET", "/v1/models/double/versions/%C2%B2"),
        ("POST", "/v1/models/double/versions/%C2%B2:predict"),
        ("POST", "/predictions/double/%C2%B2"),
    ],
)
def test_digits_that_are_not_ascii_are_an_unknown_version_not_a_crash(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path, json={"instances": [[1.0]]})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()
