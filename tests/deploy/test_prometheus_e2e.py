"""A real Prometheus scrapes a real server, and the dashboard's and the docs' PromQL run against it."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import Server
from tests.deploy.metric_names import DOC_QUERIES
from tests.deploy.test_grafana import dashboard, queries
from tests.server import free_port, spawn, stop_process, wait_ready

PROMETHEUS = shutil.which("prometheus")
P99 = "histogram_quantile(0.99, sum by (le) (rate(tandem_request_duration_seconds_bucket[30s])))"
DEADLINE_S = 90.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus binary not installed (Debian: apt-get install -y --no-install-recommends prometheus)",
    ),
]


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping the server every second."""
    assert PROMETHEUS is not None
    base = tmp_path_factory.mktemp("prometheus")
    target = server.url.removeprefix("http://")
    config = base / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: tandem\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = base / "prometheus.log"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = spawn(command, log, cwd=base)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/-/ready", log, "prometheus", timeout_s=60)
        yield url
    finally:
        stop_process(proc)


def query(client: httpx.Client, url: str, promql: str) -> dict[str, Any]:
    response = client.get(f"{url}/api/v1/query", params={"query": promql})
    body: dict[str, Any] = response.json()
    assert response.status_code == 200, f"{promql}: {body}"
    assert body["status"] == "success", f"{promql}: {body}"
    return body


def target_up(client: httpx.Client, url: str) -> bool:
    targets = client.get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
    return any(t["labels"]["job"] == "tandem" and t["health"] == "up" for t in targets)


def first_number(body: dict[str, Any]) -> float | None:
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


@pytest.fixture(scope="module")
def p99_seconds(server: Server, prometheus: str) -> float:
    """Send traffic until Prometheus sees the server up and answers the p99 query with a number."""
    deadline = time.monotonic() + DEADLINE_S
    up = False
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            for rows in (1, 2, 4):
                assert server.infer(client, rows).status_code == 200
            up = up or target_up(client, prometheus)
            if up:
                value = first_number(query(client, prometheus, P99))
                if value is not None:
                    return value
            time.sleep(0.5)
    pytest.fail(f"within {DEADLINE_S:.0f} s: target up={up}, but no number for {P99}")


def test_scrape_target_is_up_and_p99_is_a_number(p99_seconds: float) -> None:
    assert 0 < p99_seconds < 30


def test_dashboard_queries_are_valid_promql(prometheus: str, p99_seconds: float) -> None:
    with httpx.Client(timeout=5.0) as client:
        for _where, expr in queries(dashboard()):
            promql = expr.replace("$__rate_interval", "30s").replace("$model", ".*")
            if promql.startswith("label_values("):
                continue  # a Grafana function, not PromQL
            query(client, prometheus, promql)


def test_documented_queries_answer(prometheus: str, p99_seconds: float) -> None:
    with httpx.Client(timeout=5.0) as client:
        for name, promql in DOC_QUERIES.items():
            body = query(client, prometheus, promql)
            if name != "failure ratio":  # no failures were sent: an empty numerator is right
                assert first_number(body) is not None, f"{name}: no value for {promql}: {body}"
        mean_batch = first_number(query(client, prometheus, DOC_QUERIES["mean batch size"]))
        assert mean_batch is not None
        assert mean_batch >= 1.0
