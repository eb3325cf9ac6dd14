"""A worker's requests of one loop pass travel to the engine as one message when they would batch together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from service.errors import QueueFullError, ServiceUnavailableError
from service.inference import InferRequest
from service.ipc import gather, wire


def request(rows: int = 1, value: float = 0.0, **changes: object) -> InferRequest:
    fields: dict[str, object] = {"outputs": None, "pinned": False, "deadline": 100.002, "id": f"r{value}", "rows": rows}
    fields.update(changes)
    inputs = {"x": np.full((rows, 4), value, dtype=np.float32)}
    return InferRequest("m", 1, inputs, **fields)  # type: ignore[arg-type]


LOOP: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop the futures belong to (never run: the parts' futures are resolved by hand)."""
    new = asyncio.new_event_loop()
    LOOP[:] = [new]
    yield new
    new.close()


def part(req: InferRequest, gone: object = None) -> gather.Part:
    return gather.Part(req, LOOP[0].create_future(), gone)  # type: ignore[arg-type]


def test_requests_that_would_batch_together_share_a_key() -> None:
    key = gather.key_of(request(), 64)
    assert key is not None
    assert gather.key_of(request(value=5.0, deadline=100.006), 64) == key  # other values, a close deadline
    assert gather.key_of(request(deadline=100.05), 64) != key  # a deadline further off
    assert gather.key_of(request(pinned=True), 64) != key
    assert gather.key_of(request(outputs=("y",)), 64) != key
    other_shape = InferRequest("m", 1, {"x": np.zeros((1, 5), np.float32)}, deadline=100.002)
    assert gather.key_of(other_shape, 64) != key
    other_dtype = InferRequest("m", 1, {"x": np.zeros((1, 4), np.float64)}, deadline=100.002)
    assert gather.key_of(other_dtype, 64) != key


def test_a_request_that_cannot_share_travels_alone() -> None:
    assert gather.key_of(request(), 0) is None  # the model does not batch
    assert gather.key_of(request(), 1) is None
    assert gather.key_of(request(rows=64), 64) is None  # a full batch already
    text = InferRequest("m", 1, {"s": np.array([b"a"], dtype=object)}, deadline=100.0)
    assert gather.key_of(text, 64) is None  # BYTES travel inline


def test_groups_never_pass_max_rows() -> None:
    gathering = gather.Gathering()
    key = ("k",)
    for rows in (3, 3, 3, 1):
        gathering.add(key, part(request(rows=rows)), max_rows=7)
    groups = gathering.take()
    assert [[p.request.rows for p in group] for group in groups] == [[3, 3], [3, 1]]
    assert gathering.take() == []


def test_merge_and_split_give_each_part_its_own_rows() -> None:
    parts = [part(request(rows=1, value=1.0, deadline=100.004)), part(request(rows=2, value=2.0)), part(request())]
    merged = gather.merge(parts)
    assert merged.rows == 4
    assert merged.deadline == 100.002  # the earliest: no part runs past its own
    assert merged.inputs["x"][:, 0].tolist() == [1.0, 2.0, 2.0, 0.0]
    back = gather.split({"y": merged.inputs["x"] * 2}, parts)
    assert [own["y"][:, 0].tolist() for own in back] == [[2.0], [4.0, 4.0], [0.0]]
    lone = [part(request())]
    assert gather.merge(lone) is lone[0].request


def answered(header: dict[str, object], arrays: dict[str, np.ndarray] | None = None) -> asyncio.Future[object]:
    future: asyncio.Future[object] = LOOP[0].create_future()
    refs, payload = wire.pack(arrays or {}, None)
    future.set_result(({**header, "outputs": refs}, memoryview(b"".join(payload))))
    return future


def test_an_answer_reaches_each_part_and_skips_a_cancelled_one() -> None:
    parts = [part(request(value=1.0)), part(request(value=2.0)), part(request(value=3.0))]
    parts[1].future.cancel()  # that caller left
    outputs = {"y": np.array([[1.0], [2.0], [3.0]], np.float32)}
    gather.deliver(answered({"model": "m", "version": 1}, outputs), parts)  # type: ignore[arg-type]
    assert parts[0].future.result()[1]["y"].tolist() == [[1.0]]
    assert parts[2].future.result()[1]["y"].tolist() == [[3.0]]


def test_an_error_reaches_every_part_as_its_own_exception() -> None:
    parts = [part(request()), part(request())]
    error = wire.error_header(QueueFullError("m: queue is full", retry_after_s=1))
    gather.deliver(answered(error), parts)  # type: ignore[arg-type]
    first, second = (p.future.exception() for p in parts)
    assert isinstance(first, QueueFullError)
    assert isinstance(second, QueueFullError)
    assert first is not second
    lost = [part(request())]
    failed: asyncio.Future[object] = LOOP[0].create_future()
    failed.set_exception(ServiceUnavailableError("the engine process is restarting"))
    gather.deliver(failed, lost)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError):
        lost[0].future.result()


def test_a_merged_request_is_dropped_only_when_every_client_left() -> None:
    left = {"a": True, "b": False}
    parts = [part(request(), lambda: left["a"]), part(request(), lambda: left["b"])]
    gone = gather.all_gone(parts)
    assert gone is not None
    assert not gone()
    left["b"] = True
    assert gone()
    assert gather.all_gone([*parts, part(request())]) is None  # one part cannot tell: never dropped
