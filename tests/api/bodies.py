"""Assertions on response bodies shared by the API tests."""

from __future__ import annotations

import httpx

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
