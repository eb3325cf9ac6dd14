"""A connection's buffers: a response's head and body sent together, a request's body kept as it arrived."""

from __future__ import annotations

import asyncio
from typing import Any


class OneWrite:
    """A response's transport that holds the head until the body's first bytes, so both leave in one send.

    uvicorn writes a response's head and body separately: two system calls and two TCP segments per response.
    Not used for HEAD requests (no body is written) nor after `Expect: 100-continue` (the interim answer must go
    at once).
    """

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        """The first write (the head) is held; the next goes out with it."""
        if self._head is None:
            self._head = data
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def close(self) -> None:
        """Send a held head, then close."""
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BodyChunks:
    """A request body as the chunks that arrived, kept as they are, for uvicorn's request cycle.

    uvicorn gathers a body into a bytearray (`cycle.body += chunk`) and hands the app `bytes(cycle.body)`: two
    copies of every body, 400 KB of memory traffic for a 200 KB tensor request. In their place this keeps the
    chunks, and a body that arrived in one chunk reaches the app as that same object. It offers what the cycle
    uses of a bytearray: `+=`, `len()` (for uvicorn's read pause past its high-water mark) and `bytes()`.
    """

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def __iadd__(self, chunk: bytes) -> BodyChunks:
        self._chunks.append(chunk)
        self._size += len(chunk)
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self._chunks)  # one chunk: that object itself, joining copies nothing
