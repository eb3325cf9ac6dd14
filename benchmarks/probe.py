"""A low-rate probe: single requests, one at a time on a fresh connection, timed by status, during a load level."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from benchmarks.bodies import Body

INTERVAL_S = 0.05  # 20 requests per second at most: nothing next to the load it observes
TIMEOUT_S = 30.0


@dataclass
class ProbeResult:
    """Latencies in seconds keyed by HTTP status (0: no response)."""

    latencies: dict[int, list[float]] = field(default_factory=dict)

    def add(self, status: int, seconds: float) -> None:
        """Record one request."""
        self.latencies.setdefault(status, []).append(seconds)

    def count(self, status: int) -> int:
        """Requests answered with status."""
        return len(self.latencies.get(status, []))

    def percentile_ms(self, status: int, q: float) -> float:
        """Latency percentile of the requests answered with status, in ms (NaN when none)."""
        values = self.latencies.get(status)
        return float(np.percentile(values, q) * 1000) if values else float("nan")

    def summary(self) -> str:
        """One line: count, p50 and p99 per status."""
        parts = [
            f"{status or 'no response'}: {self.count(status)} (p50 {self.percentile_ms(status, 50):.1f} ms, "
            f"p99 {self.percentile_ms(status, 99):.1f} ms)"
            for status in sorted(self.latencies)
        ]
        return "; ".join(parts) or "no requests"


class Probe:
    """Sends `body` every INTERVAL_S from a thread until stopped."""

    def __init__(self, base: str, body: Body) -> None:
        self.result = ProbeResult()
        self._url = urlsplit(base)
        self._body = body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            start = time.perf_counter()
            status = self._one()
            self.result.add(status, time.perf_counter() - start)

    def _one(self) -> int:
        conn = http.client.HTTPConnection(self._url.hostname or "127.0.0.1", self._url.port, timeout=TIMEOUT_S)
        try:
            conn.request("POST", self._body.path, self._body.content, self._body.headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except OSError:
            return 0
        finally:
            conn.close()
