"""The engine link's framing: messages split across reads, many in one read, large ones, and the end of a stream."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from service.ipc import wire

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def encoded(header: dict[str, object], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return wire._SIZES.pack(len(head), len(payload)) + head + payload


def stream(*chunks: bytes, end: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if end:
        reader.feed_eof()
    return reader


async def test_every_message_that_arrived_comes_out_of_one_read() -> None:
    data = b"".join(encoded({"id": i}, bytes([i]) * i) for i in range(5))
    frames = await wire.Frames(stream(data)).read()
    assert [(h["id"], bytes(p)) for h, p in frames] == [(i, bytes([i]) * i) for i in range(5)]


async def test_a_message_split_at_every_byte_is_put_back_together() -> None:
    data = encoded({"id": 1}, b"payload") + encoded({"id": 2})
    reader = asyncio.StreamReader()
    frames = wire.Frames(reader)
    got: list[tuple[int, bytes]] = []

    async def collect() -> None:
        while len(got) < 2:
            got.extend((h["id"], bytes(p)) for h, p in await frames.read())

    task = asyncio.create_task(collect())
    for i in range(len(data)):  # the reader waits between bytes: every read returns one byte
        reader.feed_data(data[i : i + 1])
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert got == [(1, b"payload"), (2, b"")]


async def test_a_message_larger_than_a_read_arrives_whole() -> None:
    big = np.arange(wire.READ_CHUNK // 2, dtype=np.float64).tobytes()  # 4 MiB: several reads
    data = encoded({"id": 7}, big) + encoded({"id": 8}, b"x")
    frames = wire.Frames(stream(data[:100], data[100:]))
    (header, payload), *rest = await frames.read()
    assert header == {"id": 7}
    assert bytes(payload) == big
    if not rest:
        rest = await frames.read()
    assert [(h["id"], bytes(p)) for h, p in rest] == [(8, b"x")]


async def test_the_end_of_the_stream_mid_message_is_an_incomplete_read() -> None:
    data = encoded({"id": 1}, b"abc")
    frames = wire.Frames(stream(data + data[:5]))
    assert [h["id"] for h, _ in await frames.read()] == [1]
    with pytest.raises(asyncio.IncompleteReadError):
        await frames.read()
    with pytest.raises(asyncio.IncompleteReadError):
        await wire.Frames(stream()).read()
