"""uvicorn's httptools connection, bounded: request head limits and timeouts, and Connection: close while draining.

httptools buffers a header until it is complete and puts no bound on its size, so a client could make the server
hold megabytes per connection. Here every byte of a request head is counted as it arrives (max_header_bytes), the
request target and each header are bounded (max_request_line_bytes -> 414, max_header_line_bytes -> 431), and a
head must arrive within header_timeout_s of the connection or of its first byte (408), so idle or trickling
connections cannot pile up. The keep-alive idle timeout is uvicorn's (keep_alive_timeout_s).

Under overload, connections wait in line for their model unread (service.http_overload). A request's body is kept
as the chunks that arrived and its response leaves in one write (service.http_transport).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.server import ServerState

from service.balance import Shares
from service.codec import dumps
from service.http_overload import OverloadProtocol
from service.http_transport import BodyChunks, OneWrite
from service.lifecycle import Lifecycle
from service.logs import RequestIds
from service.overload import Refusals
from service.settings import Settings

log = logging.getLogger("tandem.http")
LINGER_S = 2.0  # how long a refused connection keeps reading (and discarding) so the client can read the answer


class HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing a request whose head breaks a limit."""


class BoundedHttpProtocol(OverloadProtocol):
    """One HTTP/1.1 connection; `protocol_class` binds the settings, the lifecycle and the overload state."""

    settings: ClassVar[Settings]
    shares: ClassVar[Shares | None] = None  # a worker's open-connection count (service.balance)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # between requests or inside a head: arriving bytes count against max_header_bytes
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far, to find a blank line split across chunks
        self._head_timer: TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    # ----- connection events ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept, and start the clock for the first request head."""
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head clock along with the connection; a drain may be waiting for it."""
        self._stop_head_timer()
        self._overload_ended()
        super().connection_lost(exc)
        if self.shares is not None:
            self.shares.closed()
        if self.lifecycle.draining:
            self.lifecycle.notify()

    def on_response_complete(self) -> None:
        """A response went out; a drain may be waiting for it. Under overload, the connection may wait in line."""
        self._end_reservation()
        model = self._line_to_join()
        if model is None:
            super().on_response_complete()
        else:  # connections wait for the model that just answered: join the back of their line, unread
            self.server_state.total_requests += 1
            self._hold(model)
        if self.lifecycle.draining:
            self.lifecycle.notify()

    def data_received(self, data: bytes) -> None:
        """Count head bytes before the parser buffers them; refuse a head past max_header_bytes."""
        if self._refusal is not None:
            return
        if self._in_head and self._count_head(data) > self.settings.max_header_bytes:
            self._refuse(431, f"request head exceeds max_header_bytes={self.settings.max_header_bytes}")
            return
        super().data_received(data)

    def _count_head(self, data: bytes) -> int:
        """Add the head's bytes in `data` (up to the blank line that ends it, which may straddle chunks)."""
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._head_tail = window[-3:]
        else:  # what follows the head (a body, a pipelined request) is not head
            self._head_bytes += max(0, end + 4 - len(self._head_tail))
            self._head_tail = b""
        return self._head_bytes

    def send_400_response(self, msg: str) -> None:
        """A parse error; or, when a limit stopped the parser, that limit's answer."""
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    # ----- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        """A request starts: its head must be complete within header_timeout_s."""
        super().on_message_begin()
        self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        """Bound the request target as it arrives."""
        super().on_url(url)
        limit = self.settings.max_request_line_bytes
        if len(self.url) > limit:
            self._stop_parsing(414, f"request target exceeds max_request_line_bytes={limit}")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Bound each header line."""
        limit = self.settings.max_header_line_bytes
        if len(name) + len(value) > limit:
            self._stop_parsing(431, f"header '{name[:64].decode('latin-1')}' exceeds max_header_line_bytes={limit}")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: stop its clock; while draining, the response will close the connection."""
        self._in_head, self._head_bytes, self._head_tail = False, 0, b""
        self._stop_head_timer()
        if self._refused_from_head():
            return
        super().on_headers_complete()
        if self.cycle is not None:
            if self.lifecycle.draining:
                self.cycle.keep_alive = False
            if not self.expect_100_continue and self.scope["method"] != "HEAD":
                self.cycle.transport = OneWrite(self.transport)  # type: ignore[assignment]
            self.cycle.body = BodyChunks()  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        """Body bytes go to the request, unless it was refused from its head."""
        if self._early is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """The body is in: bytes from here on belong to the next request's head."""
        self._in_head = True
        if self._early is not None:
            self._answer_early(self._early)
            self._early = None
            return
        super().on_message_complete()

    # ----- draining ---------------------------------------------------------------------------------
    def close_after_response(self) -> None:
        """Draining starts: the request in progress is answered with Connection: close, then the connection ends.

        An idle keep-alive connection stays open: closing it could cross a request the client is sending
        right now. Its next request is answered (with Connection: close); otherwise it ends at the keep-alive
        timeout or when the drain does.
        """
        if self.busy:
            self.cycle.keep_alive = False
        self._resume()  # a held connection's next request is read, and answered with Connection: close

    def abort(self) -> None:
        """The drain is over: close now."""
        if not self.transport.is_closing():
            self.transport.close()

    # ----- helpers ----------------------------------------------------------------------------------
    def _stop_parsing(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise HeadRefused(message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a head that broke a limit (JSON error body, Connection: close) and close the connection."""
        self._refusal = (status, message)
        self._stop_head_timer()
        log.warning("refused a request from %s: %s", self.client[0] if self.client else "?", message)
        body = dumps({"error": message})
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        if self.transport.is_closing():
            return
        self.transport.write(b"".join(head) + body)
        # Closing with unread request bytes would reset the connection, and the client might never read the
        # answer: send FIN, discard what still arrives (data_received ignores it), and close a little later.
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.abort)

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.settings.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:  # nothing of a request arrived: close quietly, like a keep-alive timeout
            self.transport.close()
            return
        self._refuse(408, f"request head not received within header_timeout_s={self.settings.header_timeout_s:g}")


def protocol_class(
    settings: Settings,
    lifecycle: Lifecycle,
    refusals: Refusals,
    request_ids: RequestIds,
    shares: Shares | None = None,
) -> type[BoundedHttpProtocol]:
    """The connection class uvicorn instantiates, bound to this server's settings, lifecycle and overload state."""

    class TandemHttpProtocol(BoundedHttpProtocol):
        pass

    TandemHttpProtocol.settings, TandemHttpProtocol.lifecycle = settings, lifecycle
    TandemHttpProtocol.refusals, TandemHttpProtocol.request_ids = refusals, request_ids
    TandemHttpProtocol.shares = shares
    return TandemHttpProtocol
