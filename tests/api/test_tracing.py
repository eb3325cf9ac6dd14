"""Traces: a V2 request on a real loopback server yields infer -> decode, queue, batch, encode in the caller's trace."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.app import create_app
from service.settings import Settings
from tests.api.models import mlp
from tests.server import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[str, InMemorySpanExporter]]:
    """This process serves one model on loopback with traces going to memory."""
    mlp(tmp_path / "mlp" / "1" / "model.onnx", 1)
    exporter = InMemorySpanExporter()
    tracing.enable(exporter)
    port = free_port()
    app = create_app(Settings(models_dir=tmp_path, device="cpu"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}", exporter
    finally:
        server.should_exit = True
        thread.join(30)
        tracing.disable()


def test_one_v2_request_yields_the_span_tree_in_the_incoming_trace(
    traced: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01", "X-Request-Id": "traced-1"}
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v2/models/mlp/infer", json=BODY, headers=headers)
    assert answer.status_code == 200, answer.text
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"infer", "decode", "queue", "batch", "encode", "batch execution"} <= spans.keys()
    root = spans["infer"]
    assert root.context is not None
    assert root.parent is not None
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert f"{root.parent.span_id:016x}" == PARENT
    assert root.attributes is not None
    assert root.attributes["tandem.request_id"] == "traced-1"
    assert root.attributes["tandem.model"] == "mlp"
    order = [spans[name] for name in ("decode", "queue", "batch", "encode")]
    for child in order:
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.context is not None
        assert child.context.trace_id == root.context.trace_id
    starts = [child.start_time or 0 for child in order]
    assert starts == sorted(starts)
    shared = spans["batch execution"].context
    assert shared is not None
    assert [link.context.span_id for link in spans["batch"].links] == [shared.span_id]
    assert (root.start_time or 0) <= starts[0]
    assert (order[-1].end_time or 0) <= (root.end_time or 0)


def test_with_traces_off_the_sdk_and_exporter_are_never_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from service.app import create_app; from service.settings import Settings; "
        f"create_app(Settings(models_dir={str(tmp_path)!r})); "
        "sys.exit(1 if any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')) for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
