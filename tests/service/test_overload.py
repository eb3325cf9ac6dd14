"""The lines of held connections: who is let in when a model has room, and what counts against that room."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.overload import Refusals


@dataclass
class Model:
    """Just what release() reads of a model version: its name and its room."""

    name: str
    room: int


def held(refusals: Refusals, model: str, log: list[int], index: int, *, alive: bool = True) -> Callable[[], bool]:
    """Hold connection `index`: letting it go appends it to `log` (a closed one says it no longer waits)."""

    def resume() -> bool:
        if alive:
            log.append(index)
        return alive

    refusals.hold(model, resume)
    return resume


def test_a_completion_lets_in_as_many_as_there_is_room_for_oldest_first() -> None:
    refusals, log = Refusals(), list[int]()
    for index in range(5):
        held(refusals, "m", log, index)
    assert refusals.waiting("m")
    refusals.release(Model("m", room=2))  # type: ignore[arg-type]
    assert log == [0, 1]
    # The two let in have not sent their next request yet: they count against the room.
    refusals.release(Model("m", room=2))  # type: ignore[arg-type]
    assert log == [0, 1]
    refusals.arrived("m")
    refusals.release(Model("m", room=2))  # type: ignore[arg-type]
    assert log == [0, 1, 2]
    assert refusals.holding == 2


def test_connections_that_no_longer_wait_are_skipped_and_lines_are_per_model() -> None:
    refusals, log = Refusals(), list[int]()
    held(refusals, "m", log, 0, alive=False)  # closed, or let go by its timer already
    held(refusals, "other", log, 1)
    held(refusals, "m", log, 2)
    refusals.release(Model("m", room=1))  # type: ignore[arg-type]
    assert log == [2]
    assert not refusals.waiting("m")
    assert refusals.waiting("other")
    refusals.release(Model("m", room=5))  # type: ignore[arg-type]
    assert log == [2]


def test_no_room_lets_nobody_in() -> None:
    refusals, log = Refusals(), list[int]()
    held(refusals, "m", log, 0)
    refusals.release(Model("m", room=0))  # type: ignore[arg-type]
    assert log == []
    assert refusals.waiting("m")
