"""Framed messages: a JSON header and a binary payload; tensors by reference to shared memory or inline; errors."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from service import errors
from service.codec import deserialize_bytes_tensor, serialize_bytes_tensor
from service.ipc.arena import Arena, Reader
from service.tensors import datatype_of, numpy_dtype

_SIZES = struct.Struct("<II")  # header bytes, payload bytes


Frame = tuple[dict[str, Any], memoryview]
READ_CHUNK = 1 << 20


class Frames:
    """The messages of a stream, every complete one that has arrived taken in one read.

    One read per wake-up instead of two exact reads per message: a worker's answers to a whole batch, or the
    requests a worker sent in one pass of its loop, come out together. A payload is a view of the bytes read,
    so its arrays need no copy.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._rest = b""  # the start of a message that has not fully arrived

    async def read(self) -> list[Frame]:
        """The next messages, at least one; IncompleteReadError when the stream ends."""
        data = self._rest
        while True:
            frames, used = _split(data)
            if frames:
                self._rest = data[used:]
                return frames
            missing = _SIZES.size + sum(_SIZES.unpack_from(data)) - len(data) if len(data) >= _SIZES.size else 0
            if missing > READ_CHUNK:  # a large message: the rest of it in one exact read, not chunk by chunk
                more = await self._reader.readexactly(missing)
            elif not (more := await self._reader.read(READ_CHUNK)):
                raise asyncio.IncompleteReadError(data, None)
            data = data + more if data else more


def _split(data: bytes) -> tuple[list[Frame], int]:
    view = memoryview(data)
    frames: list[Frame] = []
    position, end = 0, len(data)
    while end - position >= _SIZES.size:
        head, size = _SIZES.unpack_from(data, position)
        start = position + _SIZES.size
        stop = start + head + size
        if stop > end:
            break
        frames.append((orjson.loads(view[start : start + head]), view[start + head : stop]))
        position = stop
    return frames, position


# Frames queued for each stream during this pass of the event loop: they leave together in one write at its end,
# so a worker sending many requests (or the engine answering a whole batch) makes one system call, not one each.
_outbox: dict[asyncio.StreamWriter, list[bytes]] = {}


def write_frame(writer: asyncio.StreamWriter, header: dict[str, Any], payload: Sequence[bytes] = ()) -> None:
    """Queue one message on the stream; it is written, in order, with the others queued in this loop pass."""
    head = orjson.dumps(header)
    size = sum(len(part) for part in payload)
    parts = _outbox.get(writer)
    if parts is None:
        parts = _outbox[writer] = []
        asyncio.get_running_loop().call_soon(_flush, writer)
    parts += [_SIZES.pack(len(head), size), head, *payload]


def _flush(writer: asyncio.StreamWriter) -> None:
    parts = _outbox.pop(writer)
    if not writer.is_closing():
        writer.writelines(parts)


def pack(arrays: dict[str, np.ndarray], arena: Arena | None) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Describe arrays for the other side: numeric ones copied into the arena where a slot is free, else inline."""
    refs: list[dict[str, Any]] = []
    payload: list[bytes] = []
    position = 0
    for name, array in arrays.items():
        datatype = datatype_of(array.dtype)
        ref: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        offset = arena.put(array) if arena is not None and datatype != "BYTES" else None
        if offset is not None:
            ref["shm"] = offset
        else:
            raw = serialize_bytes_tensor(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()
            ref["at"], ref["size"] = position, len(raw)
            payload.append(raw)
            position += len(raw)
        refs.append(ref)
    return refs, payload


def unpack(refs: list[dict[str, Any]], payload: memoryview, shared: Reader | None) -> dict[str, np.ndarray]:
    """The arrays `pack` described: views into shared memory or the payload, without copying."""
    arrays: dict[str, np.ndarray] = {}
    for ref in refs:
        shape = tuple(ref["shape"])
        dtype = numpy_dtype(ref["datatype"])
        if "shm" in ref and shared is not None:
            arrays[ref["name"]] = shared.view(ref["shm"], dtype, shape)
            continue
        raw = payload[ref["at"] : ref["at"] + ref["size"]]
        if ref["datatype"] == "BYTES":
            count = math.prod(shape)
            arrays[ref["name"]] = deserialize_bytes_tensor(raw, count, ref["name"]).reshape(shape)
        else:
            arrays[ref["name"]] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return arrays


def released(refs: list[dict[str, Any]]) -> list[int]:
    """The arena offsets a packed request holds."""
    return [ref["shm"] for ref in refs if "shm" in ref]


def error_header(exc: errors.ServiceError) -> dict[str, Any]:
    """A domain error as a header: its class and message cross; causes and tracebacks stay in the engine's log."""
    return {"error": type(exc).__name__, "message": exc.message, "headers": exc.headers}


def error_from(header: dict[str, Any]) -> errors.ServiceError:
    """The domain error an error header describes (InternalError for a name this side does not know)."""
    cls = getattr(errors, str(header.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ServiceError)):
        cls = errors.InternalError
    err: errors.ServiceError = cls.__new__(cls)
    errors.ServiceError.__init__(err, str(header.get("message", "")), headers=header.get("headers") or {})
    return err
