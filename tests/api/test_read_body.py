"""Reading a request: its body from the ASGI messages (whole, chunked, too big, cut off), the disconnect probe."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import Request

from service.api.http import disconnected, read_body
from service.errors import ClientGoneError, PayloadTooLargeError


def request_of(messages: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Request:
    """A request whose receive() hands out `messages` in order, as a server would."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    raw = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "headers": raw, "path": "/"}, receive)


def chunk(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def test_a_body_in_one_message_is_returned_as_it_came() -> None:
    body = b'{"inputs": []}'
    request = request_of([chunk(body, False)], {"content-length": str(len(body))})
    assert asyncio.run(read_body(request, 1024)) == body


def test_chunks_are_joined_in_order() -> None:
    request = request_of([chunk(b"ab", True), chunk(b"", True), chunk(b"cd", True), chunk(b"e", False)])
    assert asyncio.run(read_body(request, 1024)) == b"abcde"


def test_a_streamed_body_past_the_limit_is_413_before_the_rest_is_read() -> None:
    request = request_of([chunk(b"x" * 600, True), chunk(b"x" * 600, True)])  # no third message: must not be read
    with pytest.raises(PayloadTooLargeError, match="max_body_bytes=1024"):
        asyncio.run(read_body(request, 1024))


def test_a_client_that_leaves_mid_body_is_499_not_a_server_error() -> None:
    request = request_of([chunk(b"ab", True), {"type": "http.disconnect"}], {"content-length": "10"})
    with pytest.raises(ClientGoneError) as caught:
        asyncio.run(read_body(request, 1024))
    assert caught.value.status_code == 499


class Cycle:
    """Shaped like uvicorn's request cycle: receive() beside a `disconnected` flag the connection's loss sets."""

    def __init__(self) -> None:
        self.disconnected = False
        self.stepped = 0

    async def receive(self) -> dict[str, Any]:
        self.stepped += 1
        return {"type": "http.disconnect"}


def test_the_probe_reads_the_cycles_flag_when_receive_has_one() -> None:
    cycle = Cycle()
    gone = disconnected(cycle.receive)
    assert gone() is False
    cycle.disconnected = True
    assert gone() is True
    assert cycle.stepped == 0  # the flag answered: receive was never stepped


def test_the_probe_steps_any_other_receive_once() -> None:
    messages: list[dict[str, Any]] = [{"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages[0]

    gone = disconnected(receive)
    assert gone() is True
    messages[0] = {"type": "http.request", "body": b"", "more_body": False}
    assert gone() is False
