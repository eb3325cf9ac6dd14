"""Overload: refuse requests to a full model from the request head alone, and hold back the clients refused.

When a model's queue is full, the inference route refuses with 503 before the body is read. That still costs a
request's HTTP handling, and under a flood of clients the refusals alone fill the core and starve the runtime.
So the first refusal for a request path is remembered here, and from then on the HTTP connection
(service.http_overload) checks that path as soon as the request head is in: while the model is still full it
answers the same 503 itself (no routing, no ASGI task, the body discarded unread), and then stops reading that
connection until the model has room (or HOLD_S passes). While connections wait for a model, one that the model
just answered joins the back of their line before its next request is read, and each completed request (once
the batcher has taken its next batch) lets in as many of the longest-waiting ones as the model has room for.
A client that keeps sending to a full model therefore waits its turn in its own socket buffer instead of
spinning on refusals, and the server spends its CPU on the requests it can serve. A request whose head finds
room reserves its place (counted with the requests being decoded) until the route takes it over, so a burst
of heads read together cannot all pass.
A path is forgotten once its model has had room for FORGET_S.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.codec import dumps
from service.errors import QueueFullError, ServiceError, error_body_torchserve, error_body_v2

if TYPE_CHECKING:
    from prometheus_client import Counter

    from service.engine import Engine
    from service.metrics import Metrics
    from service.model import ModelInfo

HOLD_S = 1.0  # the longest a refused connection goes unread when no request to its model completes
FORGET_S = 1.0  # a remembered path is dropped once its model has had room this long
MAX_PATHS = 256  # remembered paths; past this they are all forgotten (paths come from clients)
RESERVED = "tandem.reserved"  # the scope key of a request's Reservation


@dataclass(slots=True)
class _Path:
    """What the first refusal on a path knew: how to find the model again, and how to count and word a refusal."""

    engine: Engine
    metrics: Metrics
    dialect: str
    name: str
    version: int | None
    label: str | None
    torchserve: bool
    refused_at: float


class Reservation:
    """A request whose head found room: its place counts as being decoded until the route takes it over."""

    __slots__ = ("active", "model")

    def __init__(self, model: ModelInfo) -> None:
        self.model, self.active = model, True
        model.admitting += 1

    def end(self) -> None:
        """The route admits the request itself now (or it ended before that): give the place back once."""
        if self.active:
            self.active = False
            self.model.admitting -= 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 503 answered from the head: the model it names, its JSON body and extra headers."""

    model: str
    body: bytes
    headers: dict[str, str]


class Refusals:
    """The paths whose model was full, and the connections held back until their model has room."""

    def __init__(self) -> None:
        self.paths: dict[bytes, _Path] = {}
        self.holding = 0  # connections held back, over all models
        self._metrics: Metrics | None = None
        self._counters: dict[str, Counter] = {}  # held_connections per model
        self._promised: dict[str, int] = {}  # per model: connections let go whose next request is not in yet
        self._held: dict[str, deque[Callable[[], bool]]] = {}

    def remember(
        self,
        raw_path: bytes,
        engine: Engine,
        metrics: Metrics,
        dialect: str,
        model: tuple[str, int | None, str | None],
        torchserve: bool,
    ) -> None:
        """The inference route refused a request on `raw_path` because `model` (name, version, label) was full."""
        if len(self.paths) >= MAX_PATHS:
            self.paths.clear()
        name, version, label = model
        self._metrics = metrics
        self.paths[raw_path] = _Path(engine, metrics, dialect, name, version, label, torchserve, time.monotonic())

    def check(self, method: bytes, target: bytes) -> Refusal | Reservation | None:
        """For a request head on a remembered path: the 503 if its model is full now, counted as the route would;
        else a reservation of its place, so that requests whose heads arrive together cannot all pass."""
        if method != b"POST":
            return None
        raw_path = target.partition(b"?")[0]
        entry = self.paths.get(raw_path)
        if entry is None:
            return None
        try:
            model = entry.engine.get(entry.name, entry.version, entry.label)
            if not model.ready:
                return None
            model.admit()
        except QueueFullError as err:
            entry.refused_at = time.monotonic()
            entry.metrics.observe_request(entry.dialect, model.name, str(model.version), 503, err.outcome, None)
            body = error_body_torchserve(err) if entry.torchserve else error_body_v2(err)
            return Refusal(model.name, dumps(body), err.headers)
        except ServiceError:  # gone, or not found now: the route answers it
            self.paths.pop(raw_path, None)
            return None
        if time.monotonic() - entry.refused_at > FORGET_S:
            self.paths.pop(raw_path, None)
        return Reservation(model)

    def hold(self, model: str, resume: Callable[[], bool]) -> None:
        """Keep a connection unread until release() lets it go; `resume` returns False if it no longer waits."""
        self._held.setdefault(model, deque()).append(resume)
        self.holding += 1
        counter = self._counters.get(model)
        if counter is None and self._metrics is not None:
            counter = self._counters[model] = self._metrics.held_connections.labels(model)
        if counter is not None:
            counter.inc()

    def waiting(self, model: str) -> bool:
        """Whether connections wait for `model` to have room."""
        return bool(self._held.get(model))

    def release(self, model: ModelInfo) -> None:
        """A request to `model` completed: let as many held connections be read as it has room for, oldest first.

        Connections let go whose next request has not arrived yet count against the room (see arrived()).
        """
        waiting = self._held.get(model.name)
        if not waiting:
            return
        room = model.room - self._promised.get(model.name, 0)
        while waiting and room > 0:
            self.holding -= 1
            if waiting.popleft()():
                room -= 1
                self._promised[model.name] = self._promised.get(model.name, 0) + 1

    def arrived(self, model: str) -> None:
        """A connection release() let go sent its next request (or closed): it no longer counts against the room."""
        self._promised[model] -= 1
