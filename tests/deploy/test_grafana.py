"""The Grafana dashboard queries only PROTOCOLS.md 5.2 metrics, and the server really exposes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import ROOT, Server, nvidia_gpu_present
from tests.deploy.metric_names import ADDED_METRICS, PROTOCOL_METRICS, family_of, referenced_metrics, series_names

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tandem.json"


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def queries(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query, rows' nested panels included."""
    stack = list(data.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r}", target["expr"]
    for variable in data.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        yield f"variable {variable['name']!r}", text


def dashboard_metrics() -> set[str]:
    return {name for _, expr in queries(dashboard()) for name in referenced_metrics(expr)}


def test_dashboard_parses_and_has_panels() -> None:
    data = dashboard()
    assert data["uid"]
    assert data["title"]
    panels = [p for p in data["panels"] if p["type"] != "row"]
    assert len(panels) >= 6
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(t["expr"].strip() for p in panels for t in p["targets"])


def test_dashboard_uses_only_protocol_metric_names() -> None:
    allowed = series_names(PROTOCOL_METRICS)
    for where, expr in queries(dashboard()):
        unknown = referenced_metrics(expr) - allowed
        assert not unknown, f"{where} queries {sorted(unknown)}, not in PROTOCOLS.md 5.2: {expr}"


def test_dashboard_covers_the_issue() -> None:
    used = dashboard_metrics()
    for needed in (
        "tandem_requests_total",  # requests/s and errors by outcome
        "tandem_request_duration_seconds_bucket",  # p50 / p99
        "tandem_inference_rows_total",  # mean batch rows ...
        "tandem_batches_total",  # ... per runtime call
        "tandem_batch_rows_bucket",  # batch-size distribution
        "tandem_queue_requests",
        "tandem_gpu_utilization_ratio",
        "tandem_gpu_memory_used_bytes",
        "tandem_gpu_memory_total_bytes",
    ):
        assert needed in used, f"no panel queries {needed}"
    exprs = [expr for _, expr in queries(dashboard())]
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert any("histogram_quantile(0.50" in e or "histogram_quantile(0.5," in e for e in exprs)
    assert any('outcome!="ok"' in e and "by (outcome" in e for e in exprs)


def scrape_families(text: str) -> dict[str, str]:
    """name -> type from the exposition's # TYPE lines."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind.strip()
    return families


@pytest.mark.slow
def test_live_metrics_expose_every_dashboard_metric(server: Server) -> None:
    with httpx.Client(timeout=10.0) as client:
        for rows in (1, 3):
            response = server.infer(client, rows)
            assert response.status_code == 200, response.text
        assert client.post(f"{server.url}/v2/models/no_such_model/infer", json={"inputs": []}).status_code >= 400
        scrape = client.get(f"{server.url}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    families = scrape_families(scrape.text)
    exposed = series_names(families)
    gpu = nvidia_gpu_present()
    missing = sorted(
        name
        for name in dashboard_metrics()
        if name not in exposed and (gpu or not family_of(name).startswith("tandem_gpu_"))
    )
    assert not missing, f"the dashboard queries metrics the server does not expose: {missing}"
    for name, kind in PROTOCOL_METRICS.items():
        if name in families:
            assert families[name] == kind, f"{name} is a {families[name]}, PROTOCOLS.md 5.2 says {kind}"


def test_protocol_set_matches_the_project_metrics_doc() -> None:
    doc = ROOT / "docs" / "metrics.md"
    if not doc.is_file():
        pytest.skip("docs/metrics.md not written yet")
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| `tandem_")]
    documented = {name for row in rows for name in referenced_metrics(row.split("|")[1])}
    expected = set(PROTOCOL_METRICS) | set(ADDED_METRICS)
    assert documented == expected, (
        f"docs/metrics.md and PROTOCOLS.md 5.2 (plus ADDED_METRICS) differ: {sorted(documented ^ expected)}"
    )
