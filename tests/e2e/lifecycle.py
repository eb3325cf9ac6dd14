"""Helpers for the lifecycle tests: waiting on a server's log, closed-loop clients, a model that loads on cue."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_server import infer_json
from tests.server import ServerProcess, log_tail
from tests.service.conftest import onnx_doubler

WAIT_S = 120  # upper bound on any one wait; every wait ends on an event long before on a healthy machine


def wait_for(
    what: str, done: Callable[[], bool], server: ServerProcess | None = None, timeout_s: float = WAIT_S
) -> None:
    """Poll `done()` until it holds; fail with the server's log if it never does (or the server exits)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if server is not None and server.process.poll() is not None and not done():
            pytest.fail(f"server exited ({server.process.returncode}) before {what}:\n{server.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{server.output()}" if server else ""))
        time.sleep(0.02)


def wait_for_log(server: ServerProcess, text: str) -> None:
    """Wait until the server's log holds `text`."""
    wait_for(f"log line {text!r}", lambda: text in server.log.read_text(errors="replace"), server)


def get(server: ServerProcess, path: str) -> httpx.Response:
    """One request on a fresh connection."""
    return httpx.get(f"{server.url}{path}", timeout=30)


@dataclass
class Outcome:
    """What one closed-loop client saw, in order: statuses with their Connection header, and how it ended."""

    responses: list[tuple[int, str, bool]] = field(default_factory=list)  # (status, connection header, after mark)
    ended: str = ""  # "refused" (connect refused: nothing was sent) or the transport error of a lost request


class ClosedLoop:
    """`clients` threads, each sending the next V2 infer request on its keep-alive connection once one returns."""

    def __init__(self, server: ServerProcess, clients: int) -> None:
        self.server = server
        self.outcomes = [Outcome() for _ in range(clients)]
        self.marked = threading.Event()  # set by the test: responses after it are flagged
        self._threads = [threading.Thread(target=self._run, args=(o,), daemon=True) for o in self.outcomes]
        for thread in self._threads:
            thread.start()

    def _run(self, outcome: Outcome) -> None:
        with httpx.Client(base_url=self.server.url, timeout=60) as client:
            while True:
                try:
                    response = infer_json(client, 1.0)
                except httpx.ConnectError:
                    outcome.ended = "refused"
                    return
                except httpx.TransportError as exc:  # the request was sent and never answered
                    outcome.ended = f"lost: {exc!r}"
                    return
                connection = response.headers.get("connection", "")
                outcome.responses.append((response.status_code, connection, self.marked.is_set()))

    def count(self, status: int = 200, *, close: bool | None = None, after_mark: bool | None = None) -> int:
        """Responses of that status, optionally only those with(out) Connection: close, or after the mark."""
        return sum(
            1
            for outcome in self.outcomes
            for code, connection, marked in list(outcome.responses)
            if code == status
            and (close is None or (connection == "close") == close)
            and (after_mark is None or marked == after_mark)
        )

    def join(self) -> None:
        """Wait for every client to end (each ends when the server stops accepting)."""
        for thread in self._threads:
            thread.join(timeout=WAIT_S)
        assert not any(thread.is_alive() for thread in self._threads), "a client never ended"


@contextlib.contextmanager
def model_on_cue(repo: Path, name: str) -> Iterator[Callable[[], None]]:
    """A model whose model.onnx is a named pipe: its load blocks until the test calls the yielded `release()`."""
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    artifact = onnx_doubler(repo.parent / f"{name}-artifact.onnx").read_bytes()
    pipe = version_dir / "model.onnx"
    os.mkfifo(pipe)
    released = threading.Event()

    def feed() -> None:
        with pipe.open("wb") as sink:  # blocks until the server opens the pipe to read it
            sink.write(artifact)

    writer = threading.Thread(target=feed, daemon=True)

    def release() -> None:
        released.set()
        writer.start()
        writer.join(timeout=WAIT_S)
        assert not writer.is_alive(), "the server never read the model"

    try:
        yield release
    finally:
        if not released.is_set():  # unblock a reader left waiting, so the server can stop
            with contextlib.suppress(OSError):
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))


__all__ = ["ClosedLoop", "get", "log_tail", "model_on_cue", "wait_for", "wait_for_log"]
