"""Workers sharing one listening socket each take their share of the connections (service.balance).

Real sockets on loopback and a real event loop; the other workers are played by their slots in the shared counts.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from service import balance
from service.balance import ACCEPT_SLACK, NOT_ACCEPTING, BalancedListener, Shares

WAIT_S = 30.0  # bound on every wait: a busy machine is slow, never stuck


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: the listener starts listening, as in a worker
    yield sock
    sock.close()


def shares(workers: int) -> Shares:
    return Shares(multiprocessing.get_context("spawn"), workers)


def connect(sock: socket.socket, count: int) -> list[socket.socket]:
    """Clients whose handshakes the kernel completes before anyone accepts."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(sock.getsockname(), timeout=WAIT_S)
        clients.append(client)
    return clients


class Accepted(asyncio.Protocol):
    """Counts the connections a listener accepted."""

    made: ClassVar[list[Accepted]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(self)


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll an observable condition, bounded; fail naming it."""
    deadline = time.monotonic() + WAIT_S
    for _ in itertools.count():
        if check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_past_its_share_leaves_new_connections_to_the_others(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(balance, "PAUSE_S", 3600.0)  # it steps aside and stays aside while the test looks
    counts = shares(2)
    counts.counts[1] = 0  # the other worker accepts and holds nothing yet

    async def scenario() -> None:
        made: ClassVar[list[Accepted]] = []
        Accepted.made = made
        listener = BalancedListener(listening, counts.of(0), lambda: Accepted(), backlog=16)
        clients = connect(listening, 6)
        await until(lambda: listener._pause is not None, "the listener to step aside")
        await until(lambda: len(made) == ACCEPT_SLACK + 1, "the accepted connections to start")
        assert counts.counts[0] == ACCEPT_SLACK + 1  # as many as the other worker plus the slack, no more
        listener.close()
        assert counts.counts[0] == NOT_ACCEPTING  # a closed listener no longer counts as a place to go
        for client in clients:
            client.close()

    asyncio.run(scenario())


def test_connections_the_others_leave_waiting_are_taken_anyway(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = shares(2)
    counts.counts[1] = 0  # the other worker claims to accept but never does (busy, or stuck)
    pauses: list[float] = []
    step_aside = BalancedListener._step_aside

    def counted(self: BalancedListener) -> None:
        pauses.append(time.monotonic())
        step_aside(self)

    monkeypatch.setattr(BalancedListener, "_step_aside", counted)

    async def scenario() -> None:
        listener = BalancedListener(listening, counts.of(0), lambda: Accepted(), backlog=16)
        clients = connect(listening, 6)  # all waiting before the loop runs the listener
        await until(lambda: counts.counts[0] == 6, "every connection accepted")
        # two taken within the share, one pause, then the four left waiting all at once (not one per pause)
        assert len(pauses) == 1
        listener.close()
        for client in clients:
            client.close()

    asyncio.run(scenario())


def test_a_worker_alone_or_beside_retired_ones_takes_everything(listening: socket.socket) -> None:
    counts = shares(3)
    counts.retire(1)  # a worker that died; slot 2 never started

    async def scenario() -> None:
        listener = BalancedListener(listening, counts.of(0), lambda: Accepted(), backlog=16)
        clients = connect(listening, 6)
        await until(lambda: counts.counts[0] == 6, "every connection accepted")
        assert listener._pause is None  # never stepped aside: nobody else accepts
        listener.close()
        for client in clients:
            client.close()

    asyncio.run(scenario())


def test_the_count_follows_connections_closing() -> None:
    counts = shares(2).of(0)
    counts.counts[0] = 0
    counts.opened()
    counts.opened()
    counts.closed()
    assert counts.counts[0] == 1
    counts.retire(0)
    counts.closed()  # a connection ending after the listener closed leaves the slot retired
    assert counts.counts[0] == NOT_ACCEPTING
