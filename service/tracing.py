"""OpenTelemetry traces (optional: `pip install tandem[otel]`, `--otel`): one span tree per inference request.

Off by default, and then nothing here is imported beyond this module: the route checks one boolean. When on,
the route notes four wall-clock instants (arrival, decoded, answered by the engine, encoded) and, once the
response is built, the spans are recorded with those times: `infer` (a child of the incoming W3C
`traceparent`, if any) with children `decode`, `queue`, `batch` and `encode`. The engine reports how long the
request waited and how long its batch ran, and which batch: `batch` links to one `batch execution` span
shared by every request of that batch. The exporter is OTLP, configured by the standard OTEL_* variables.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanContext, Tracer

    from service.inference import InferResponse

ENABLED = False  # the one check on the hot path
MAX_BATCHES = 4096  # batch spans remembered for linking (a batch's requests finish within moments of each other)
_state: dict[str, Any] = {}


def enable(exporter: SpanExporter | None = None) -> None:
    """Turn tracing on in this process: OTLP (OTEL_* variables) by default, or the given exporter (tests)."""
    global ENABLED
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "tandem"}))  # OTEL_SERVICE_NAME wins
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _state.update(provider=provider, tracer=provider.get_tracer("tandem"), batches=collections.OrderedDict())
    ENABLED = True


def disable() -> None:
    """Flush and turn tracing off (shutdown, tests)."""
    global ENABLED
    ENABLED = False
    provider = _state.pop("provider", None)
    if provider is not None:
        provider.shutdown()
    _state.clear()


def record(headers: Mapping[str, str], attributes: dict[str, Any], marks: list[int], response: InferResponse) -> None:
    """The request's span tree from its instants (time.time_ns(): arrival, decoded, answered, encoded)."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import Link, SpanKind, set_span_in_context

    tracer: Tracer = _state["tracer"]
    arrived, decoded, answered, encoded = marks
    queued_until = min(decoded + int(response.queue_s * 1e9), answered)
    ran_until = min(queued_until + int(response.compute_s * 1e9), answered)
    root = tracer.start_span("infer", context=extract(headers), kind=SpanKind.SERVER, start_time=arrived)
    root.set_attributes(attributes)
    inside = set_span_in_context(root)
    batch = _batch_span(tracer, response.batch_id, queued_until, ran_until)
    for name, start, end, links in (
        ("decode", arrived, decoded, []),
        ("queue", decoded, queued_until, []),
        ("batch", queued_until, ran_until, [Link(batch)] if batch is not None else []),
        ("encode", answered, encoded, []),
    ):
        tracer.start_span(name, context=inside, start_time=start, links=links).end(end_time=end)
    root.end(end_time=encoded)


def _batch_span(tracer: Tracer, batch_id: int, start: int, end: int) -> SpanContext | None:
    """The shared span of one batch, recorded by the first of its requests to finish."""
    from opentelemetry import context

    if batch_id == 0:
        return None
    batches: collections.OrderedDict[int, SpanContext] = _state["batches"]
    found = batches.get(batch_id)
    if found is None:
        span = tracer.start_span("batch execution", context=context.Context(), start_time=start)
        span.set_attribute("tandem.batch_id", batch_id)
        span.end(end_time=end)
        found = batches[batch_id] = span.get_span_context()
        if len(batches) > MAX_BATCHES:
            batches.popitem(last=False)
    return found
