"""Workers share the listening socket, and each takes only its share of the open connections.

With one socket accepted by every worker, whichever worker wakes first takes the connection, and a client that
opens its connections at once (a load balancer's pool, a benchmark) can leave one worker with twice the
connections of another for as long as they stay open: that worker saturates its core while the other idles.
So each worker publishes how many connections it holds (one slot per worker in shared memory), and a worker
that holds more than the least loaded accepting worker plus ACCEPT_SLACK leaves new connections to the others.
It steps aside for at most PAUSE_S at a time: connections the others leave waiting that long are taken anyway,
so a busy or stuck worker never stalls accepting.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

log = logging.getLogger("tandem.workers")
ACCEPT_SLACK = 1  # connections a worker may hold beyond the least loaded one and still accept
PAUSE_S = 0.01  # how long an over-share worker leaves waiting connections to the others
NOT_ACCEPTING = -1  # a slot whose worker is gone or no longer accepts


class Shares:
    """The open-connection count of every worker, in shared memory; each worker writes only its own slot."""

    def __init__(self, spawn: SpawnContext, workers: int) -> None:
        self.counts: Any = spawn.RawArray("q", [NOT_ACCEPTING] * workers)
        self.slot = -1

    def of(self, slot: int) -> Shares:
        """The view a worker process takes: the same counts, its own slot (pass it when starting the worker)."""
        view = Shares.__new__(Shares)
        view.counts, view.slot = self.counts, slot
        return view

    def retire(self, slot: int) -> None:
        """The worker in `slot` died or stopped accepting: the others no longer wait for it."""
        self.counts[slot] = NOT_ACCEPTING

    def over_share(self) -> bool:
        """Whether this worker holds more than the least loaded accepting worker, plus the slack."""
        counts, mine = self.counts, self.counts[self.slot]
        others = [n for i, n in enumerate(counts) if i != self.slot and n != NOT_ACCEPTING]
        return bool(others) and mine > min(others) + ACCEPT_SLACK

    def opened(self) -> None:
        """This worker accepted a connection."""
        self.counts[self.slot] += 1

    def closed(self) -> None:
        """One of this worker's connections ended (nothing once the worker stopped accepting)."""
        if self.counts[self.slot] > 0:
            self.counts[self.slot] -= 1


class BalancedListener:
    """Accepts connections on a shared listening socket while this worker is within its share."""

    def __init__(
        self, sock: socket.socket, shares: Shares, protocol: Callable[[], asyncio.Protocol], backlog: int
    ) -> None:
        self._sock, self._shares, self._protocol = sock, shares, protocol
        self._loop = asyncio.get_running_loop()
        self._pause: asyncio.TimerHandle | None = None
        self._open = True
        self._backlog = backlog
        self._starting: set[asyncio.Task[None]] = set()  # connections accepted, their transports not yet made
        sock.listen(backlog)  # bound by the supervisor; listening from the first worker on
        sock.setblocking(False)
        shares.counts[shares.slot] = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop accepting (the socket itself stays open for the other workers); the others stop waiting for us."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self._sock.fileno())
            if self._pause is not None:
                self._pause.cancel()
            self._shares.retire(self._shares.slot)

    async def wait_closed(self) -> None:
        """Nothing to wait for: connections already accepted are the server's to drain."""

    def _readable(self) -> None:
        if self._shares.over_share():
            self._step_aside()
        else:
            self._accept()

    def _accept(self) -> bool:
        """Take one waiting connection; False when none was waiting (or accepting failed)."""
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return False  # another worker took it
        except OSError as exc:  # out of file descriptors, say: try again shortly rather than spin
            log.warning("accepting a connection failed: %s", exc)
            self._step_aside()
            return False
        self._shares.opened()
        task = self._loop.create_task(self._connect(conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return True

    async def _connect(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._loop.connect_accepted_socket(self._protocol, conn)
        except OSError as exc:  # the client already went away
            log.debug("an accepted connection failed before it started: %s", exc)
            conn.close()
            self._shares.closed()
        except Exception:  # a bug must not leave the count high or the socket open
            log.exception("starting an accepted connection failed")
            conn.close()
            self._shares.closed()

    def _step_aside(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._pause = self._loop.call_later(PAUSE_S, self._resume)

    def _resume(self) -> None:
        """Back to accepting; connections the others left waiting meanwhile are taken now, share or not.

        All of them (up to a backlog's worth): while another worker is stuck, new connections wait at most
        one pause, whatever their rate.
        """
        self._pause = None
        if self._open:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            for _ in range(self._backlog):
                if self._pause is not None or not self._accept():
                    break
