"""service.lifecycle: signals step the phases, the grace can be skipped, the drain waits on events."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from service.lifecycle import Lifecycle, Phase
from service.settings import Settings

pytestmark = pytest.mark.anyio
LONG_S = 300  # a grace or deadline no test waits out: each one ends on the event it is about


def lifecycle(**settings: Any) -> Lifecycle:
    return Lifecycle(Settings(**settings))


async def test_sigterm_makes_it_not_ready_and_a_second_one_ends_the_grace() -> None:
    life = lifecycle(shutdown_grace_s=LONG_S)
    assert (life.phase, life.shutting_down, life.draining) == (Phase.SERVING, False, False)
    waiting = asyncio.create_task(life.wait_for_stop())
    life.on_signal(signal.SIGTERM)
    assert (life.phase, life.shutting_down, life.draining) == (Phase.GRACE, True, False)
    await asyncio.sleep(0)
    assert not waiting.done()  # the grace is running
    life.on_signal(signal.SIGTERM)
    await asyncio.wait_for(waiting, LONG_S)
    life.begin_drain()
    assert (life.phase, life.draining) == (Phase.DRAINING, True)
    assert 0 < life.drain_left_s() <= life.settings.drain_timeout_s


@pytest.mark.parametrize(("sig", "grace_s"), [(signal.SIGINT, LONG_S), (signal.SIGTERM, 0)])
async def test_sigint_or_a_zero_grace_stops_without_waiting(sig: int, grace_s: float) -> None:
    life = lifecycle(shutdown_grace_s=grace_s)
    life.on_signal(sig)
    await asyncio.wait_for(life.wait_for_stop(), LONG_S)
    assert life.phase is Phase.GRACE


async def test_the_grace_ends_by_itself() -> None:
    life = lifecycle(shutdown_grace_s=0.2)
    started = time.monotonic()
    life.on_signal(signal.SIGTERM)
    await asyncio.wait_for(life.wait_for_stop(), LONG_S)
    assert time.monotonic() - started >= 0.2


async def test_the_drain_waits_for_a_change_and_a_signal_forces_its_end() -> None:
    life = lifecycle(drain_timeout_s=LONG_S)
    life.on_signal(signal.SIGTERM)
    life.begin_drain()
    open_connections = [1]
    waiting = asyncio.create_task(life.wait_until(lambda: not open_connections, time.monotonic() + LONG_S))
    await asyncio.sleep(0)
    open_connections.clear()
    life.notify()
    assert await asyncio.wait_for(waiting, LONG_S) is True
    stuck = asyncio.create_task(life.wait_until(lambda: False, time.monotonic() + LONG_S))
    await asyncio.sleep(0)
    life.on_signal(signal.SIGTERM)  # during the drain: forced
    assert await asyncio.wait_for(stuck, LONG_S) is False
    assert life.forced


async def test_the_drain_gives_up_at_its_deadline() -> None:
    life = lifecycle()
    assert await life.wait_until(lambda: False, time.monotonic() + 0.05) is False


async def test_other_fronts_start_before_loading_and_stop_once() -> None:
    events: list[str] = []

    class Front:
        async def start(self) -> None:
            events.append("start")

        async def stop(self, timeout_s: float) -> None:
            events.append(f"stop {timeout_s:g}")

    async def load() -> None:
        events.append("load")

    async def close_engine(timeout_s: float) -> None:
        events.append(f"engine {timeout_s:g}")

    life = lifecycle(drain_timeout_s=7)
    life.add_listener(Front())
    await life.start(load)
    await life.stop_listeners()
    await life.stop(close_engine)
    assert events == ["start", "load", "stop 7", "engine 7"]


async def test_background_loading_waits_for_the_socket() -> None:
    loaded = asyncio.Event()

    async def load() -> None:
        loaded.set()

    life = Lifecycle(Settings(), background_load=True)
    await life.start(load)
    await asyncio.sleep(0)
    assert not loaded.is_set()  # not before the HTTP socket listens
    life.listening()
    await asyncio.wait_for(loaded.wait(), LONG_S)
