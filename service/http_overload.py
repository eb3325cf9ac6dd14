"""The overload side of an HTTP connection: answer a full model's 503 from the request head, and wait in line.

service.overload keeps the state (remembered paths, the lines of held connections); this is what one connection
does with it. A held connection is not read: its client's next request waits in the socket.
"""

from __future__ import annotations

from asyncio import TimerHandle
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.api.http import CALL_KEY, Call
from service.lifecycle import Lifecycle
from service.logs import RequestIds
from service.overload import HOLD_S, RESERVED, Refusal, Refusals, Reservation


class OverloadProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection that refuses a full model from the head and waits in its model's line."""

    lifecycle: ClassVar[Lifecycle]
    refusals: ClassVar[Refusals]
    request_ids: ClassVar[RequestIds]

    # Per connection; these class-level defaults hold until a connection sets its own.
    _early: Refusal | None = None  # this request is refused from its head: its body is discarded
    _held: TimerHandle | None = None  # not read until the refusing model has room (or this fires)
    _reserved: Reservation | None = None  # the place this request's head took in its model's queue
    _promised: str | None = None  # let go by this model's line; its next request is not in yet

    @property
    def busy(self) -> bool:
        """A request is in progress (read, and not yet fully answered)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refused_from_head(self) -> bool:
        """A head is in: on a remembered path, refuse it now if its model is full, else reserve its place."""
        self._arrived()
        if not self.refusals.paths or self.expect_100_continue or self.busy:
            return False
        checked = self.refusals.check(self.parser.get_method(), self.url)
        if isinstance(checked, Reservation):
            self._end_reservation()
            self._reserved = self.scope[RESERVED] = checked  # type: ignore[literal-required]
        elif checked is not None:
            self._early = checked
            return True
        return False

    def _overload_ended(self) -> None:
        """The connection is gone: it no longer waits, reserves or counts as let in."""
        self._stop_holding()
        self._end_reservation()
        self._arrived()

    def _line_to_join(self) -> str | None:
        if not self.refusals.holding or self.pipeline or self.lifecycle.draining or self.transport.is_closing():
            return None
        call: Call | None = self.cycle.scope.get(CALL_KEY) if self.cycle is not None else None  # type: ignore[assignment]
        return call.model if call is not None and self.refusals.waiting(call.model) else None

    def _answer_early(self, refusal: Refusal) -> None:
        """Answer 503 for a full model; then hold the connection unread until that model has room."""
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        keep_alive = keep_alive and not self.lifecycle.draining
        head = [STATUS_LINE[503]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in refusal.headers.items()]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(refusal.body)).encode() + b"\r\n",
            b"x-request-id: " + self.request_ids.of(self.headers) + b"\r\n",
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
        ]
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.transport.write(b"".join(head) + refusal.body)
        if not keep_alive:
            self.transport.close()
            return
        self._hold(refusal.model)

    def _hold(self, model: str) -> None:
        """Leave the connection unread at the back of `model`'s line until release() lets it in, at most HOLD_S.

        The client's next request waits in its socket meanwhile (no keep-alive clock: it may be there already).
        """
        self._unset_keepalive_if_required()
        self.flow.pause_reading()
        self._held = self.loop.call_later(HOLD_S, self._resume)

        def let_go() -> bool:
            if not self._resume():
                return False
            self._promised = model  # counted against the model's room until the next request arrives
            return True

        self.refusals.hold(model, let_go)

    def _resume(self) -> bool:
        """Read the held connection again; False if it was not held any more."""
        if self._held is None:
            return False
        self._stop_holding()
        if self.transport.is_closing():
            return False
        self.flow.resume_reading()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        return True

    def _arrived(self) -> None:
        if self._promised is not None:
            self.refusals.arrived(self._promised)
            self._promised = None

    def _end_reservation(self) -> None:
        if self._reserved is not None:
            self._reserved.end()
            self._reserved = None

    def _stop_holding(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
