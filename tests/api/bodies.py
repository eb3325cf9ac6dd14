"""Assertions on response bodies shared by the API tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

JSON = "application/json"


def ok(response: httpx.Response, status: int = 200) -> object:
    """A success with exactly application/json; returns the parsed body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    return response.json()


def error_e1(response: httpx.Response, status: int) -> str:
    """A V2 / TF Serving error (E1): the status and exactly {"error": msg}; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"])


def error(response: httpx.Response, status: int, kind: str) -> str:
    """A TorchServe error (E2): the status, {"code", "type", "message"} and nothing else; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert set(body) == {"code", "type", "message"}
    assert body["code"] == status
    assert body["type"] == kind
    return str(body["message"])


def sample(http: httpx.Client, name: str, **labels: str) -> float:
    """The value of the /metrics sample `name` with exactly these labels; 0 while it has never been set."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0
