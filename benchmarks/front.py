"""tandem's request path in-process, without HTTP: CPU microseconds per request, for changes too small for wrk.

The app (`service.app.create_app`, one process, the benchmark's MLP) is driven through its ASGI entry with one
784-value V2 or TF Serving JSON request, or one 64-row binary V2 request, at a time (c=1, one pass of the event
loop between requests, as a lone client's requests arrive) or `--concurrency` requests at once. It prints the
process's CPU time per request over `--requests` requests, `--repeat` times: noise only adds time, so the least
of many short runs is the steadiest figure on a shared host, and the spread tells how steady the machine was.
Uvicorn's protocol, the kernel and the load generator are left out; what is left is every microsecond
tandem's own code spends.

    python -m benchmarks.front                    # V2 JSON, c=1 and c=64, 15 runs each
    python -m benchmarks.front --workload tfs-json --concurrency 1
    python -m benchmarks.front --workload v2-binary-64 --concurrency 8 --requests 640
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks import bodies
from benchmarks.models import MLP, BenchModel, build_artifacts, write_repository

App = Callable[[dict[str, Any], Any, Any], Coroutine[Any, Any, None]]
WORKLOADS: dict[str, Callable[[BenchModel], bodies.Body]] = {
    "v2-json": bodies.v2_json,
    "tfs-json": bodies.tfs_json,
    "v2-binary-64": bodies.v2_binary,  # 64 rows, binary output asked for
}


def scope_of(body: bodies.Body) -> dict[str, Any]:
    """The ASGI scope uvicorn would pass for this body on a keep-alive loopback connection."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body.content)).encode()))
    headers += [(name.lower().encode(), value.encode()) for name, value in body.headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": body.path,
        "raw_path": body.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class Cycle:
    """One request's receive and send, shaped like uvicorn's request cycle (a `disconnected` flag beside them)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.delivered = False
        self.disconnected = False  # the client stays
        self.status = 0

    async def receive(self) -> dict[str, Any]:
        """The whole body in one message, then nothing until the response (a client that stays)."""
        if not self.delivered:
            self.delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        """Keep the status."""
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def request(app: App, body: bodies.Body) -> int:
    """One request through the app; its status."""
    cycle = Cycle(body.content)
    await app(scope_of(body), cycle.receive, cycle.send)
    return cycle.status


async def lifespan(app: App) -> asyncio.Queue[dict[str, Any]]:
    """Run the app's lifespan until start-up completes (the models loaded); the queue ends it."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()

    async def send(message: dict[str, Any]) -> None:
        if not started.done() and message["type"].startswith("lifespan.startup"):
            started.set_result(message)

    events.put_nowait({"type": "lifespan.startup"})
    asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, events.get, send))
    message = await started
    if message["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {message}")
    return events


async def measure(app: App, body: bodies.Body, concurrency: int, requests: int) -> float:
    """CPU microseconds per request over `requests` requests at `concurrency`."""
    rounds = max(1, requests // concurrency)
    started = time.process_time()
    for _ in range(rounds):
        if concurrency == 1:
            statuses = [await request(app, body)]
            await asyncio.sleep(0)  # a lone client's next request arrives in a later pass of the loop
        else:
            statuses = await asyncio.gather(*(request(app, body) for _ in range(concurrency)))
        if any(status != 200 for status in statuses):
            raise SystemExit(f"a request failed: statuses {sorted(set(statuses))}")
    return (time.process_time() - started) / (rounds * concurrency) * 1e6


async def run(args: argparse.Namespace) -> None:
    """Load the MLP, warm up, measure every concurrency `--repeat` times."""
    from service.app import create_app
    from service.settings import Settings

    store = build_artifacts(args.workdir / "models")
    repository = write_repository(store, args.workdir / "repos" / "front")
    settings = Settings(models_dir=repository, intra_op_threads=1, device="cpu", log_level="warning", grpc_port=0)
    app: App = create_app(settings)
    events = await lifespan(app)
    body = WORKLOADS[args.workload](MLP)
    for concurrency in args.concurrency:
        await measure(app, body, concurrency, min(args.requests, 2000))  # warm-up
        results = [await measure(app, body, concurrency, args.requests) for _ in range(args.repeat)]
        ordered = sorted(results)
        print(
            f"{args.workload} c={concurrency}: {ordered[0]:.1f} us of CPU per request at least, median "
            f"{ordered[(len(ordered) - 1) // 2]:.1f}, at most {ordered[-1]:.1f} ({len(results)} runs)",
            flush=True,
        )
    events.put_nowait({"type": "lifespan.shutdown"})


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and measure."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="v2-json")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="requests at once (1 64)")
    parser.add_argument("--requests", type=int, default=1280, help="requests per run (1280)")
    parser.add_argument("--repeat", type=int, default=15, help="runs per concurrency (15)")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/results"), help="models")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import uvloop

    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
