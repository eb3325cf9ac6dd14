"""HTTP checks against the running stack: the README's requests, Prometheus' API, and Grafana's files."""

from __future__ import annotations

import http.client
import json
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.docker_smoke.docker import wait_for
from scripts.docker_smoke.report import Report

README_HOST = "localhost:8000"


@dataclass(frozen=True)
class Request:
    """One curl command of the README's quick start."""

    dialect: str
    method: str
    path: str
    headers: dict[str, str]
    body: str


def readme_requests(readme: str) -> list[Request]:
    """The quick start's curl requests that send a body (V2, TF Serving, TorchServe), as the README writes them."""
    start = readme.index("```bash", readme.index("from another shell", readme.index("## Quick start")))
    block = readme[start + len("```bash") : readme.index("```", start + len("```bash"))]
    commands: list[tuple[str, str]] = []
    dialect = ""
    for line in block.splitlines():
        if line.startswith("#"):
            dialect = line.lstrip("# ").strip()
        elif line.startswith("curl"):
            commands.append((dialect, line))
        elif line.strip() and commands:
            commands[-1] = (commands[-1][0], commands[-1][1] + "\n" + line)
    return [_request(dialect, shlex.split(text)) for dialect, text in commands if "-d" in shlex.split(text)]


def _request(dialect: str, words: list[str]) -> Request:
    method, headers, body, url = "GET", {}, "", ""
    items = iter(words[1:])
    for word in items:
        if word == "-X":
            method = next(items)
        elif word == "-H":
            name, _, value = next(items).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(items)
            method = "POST" if method == "GET" else method
        elif word.startswith(README_HOST):
            url = word
    if body and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
    return Request(dialect, method, url.removeprefix(README_HOST), headers, body)


def call(port: int, method: str, path: str, body: str = "", headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One HTTP request to 127.0.0.1:port; (status, body text), or (0, error) when the connection fails."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(method, path, body=body.encode() or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)
    finally:
        connection.close()


def check_readme_requests(report: Report, readme: Path, port: int) -> None:
    """Send the README's V2, TF Serving and TorchServe requests through the published port."""
    requests = readme_requests(readme.read_text())
    report.require("README quick-start requests found", len(requests) == 3, ", ".join(r.dialect for r in requests))
    for request in requests:
        status, text = call(port, request.method, request.path, request.body, request.headers)
        report.check(
            f"README {request.dialect} request through 127.0.0.1:{port}",
            status == 200 and "0." in text,
            f"{request.method} {request.path} -> {status} {text[:90]}",
        )


def prometheus_api(port: int, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a Prometheus HTTP API path; the decoded `data`, or {} on any failure."""
    suffix = "?" + urllib.parse.urlencode(query) if query else ""
    status, text = call(port, "GET", path + suffix)
    if status != 200:
        return {}
    try:
        data = json.loads(text).get("data")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def check_prometheus(report: Report, port: int, job: str, timeout_s: float = 90) -> None:
    """The tandem target is up and tandem_requests_total > 0, both through Prometheus' query API."""
    targets: list[dict[str, Any]] = []

    def target_up() -> bool:
        targets[:] = [
            t for t in prometheus_api(port, "/api/v1/targets").get("activeTargets", []) if t["labels"].get("job") == job
        ]
        return bool(targets) and all(t.get("health") == "up" for t in targets)

    up = wait_for(target_up, timeout_s)
    shown = ", ".join(f"{t['scrapeUrl']} {t.get('health')}" for t in targets) or "no target"
    report.check(f"Prometheus target job={job} up", up, shown)
    value = [0.0]

    def counted() -> bool:
        result = prometheus_api(port, "/api/v1/query", {"query": "sum(tandem_requests_total)"}).get("result", [])
        value[0] = float(result[0]["value"][1]) if result else 0.0
        return value[0] > 0

    positive = wait_for(counted, timeout_s)
    report.check("Prometheus query sum(tandem_requests_total) > 0", positive, f"{value[0]:g}")


def check_grafana_static(report: Report, root: Path, stack: dict[str, Any], image: str) -> None:
    """Grafana's image cannot be had here: its provisioning is checked as files, not run."""
    provisioning = root / "deploy" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    providers = yaml.safe_load((provisioning / "dashboards" / "tandem.yml").read_text())["providers"]
    dashboard = json.loads((root / "deploy" / "grafana" / "dashboards" / "tandem.json").read_text())
    uids = {source["uid"] for source in sources}
    prometheus_port = stack["services"]["prometheus"]["command"][-1].rsplit(":", 1)[-1]
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    ok = (
        [source["url"] for source in sources] == [f"http://prometheus:{prometheus_port}"]
        and providers[0]["options"]["path"] == "/etc/dashboards/tandem"
        and all(panel["datasource"]["uid"] in uids for panel in panels)
    )
    report.check(
        f"Grafana provisioning (static only: {image} cannot be pulled here, so Grafana is not started)",
        ok,
        f"datasource {sources[0]['url']}, {len(panels)} panels on uid {sorted(uids)}",
    )
