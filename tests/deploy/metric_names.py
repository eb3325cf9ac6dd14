"""The metric set of docs/metrics.md, and the PromQL names each metric exposes."""

from __future__ import annotations

import re

# name -> Prometheus type, exactly as docs/metrics.md lists them (counters with their _total).
PROTOCOL_METRICS: dict[str, str] = {
    "tandem_requests_total": "counter",
    "tandem_request_duration_seconds": "histogram",
    "tandem_queue_duration_seconds": "histogram",
    "tandem_compute_duration_seconds": "histogram",
    "tandem_batch_rows": "histogram",
    "tandem_inference_rows_total": "counter",
    "tandem_batches_total": "counter",
    "tandem_queue_requests": "gauge",
    "tandem_inflight_batches": "gauge",
    "tandem_model_ready": "gauge",
    "tandem_model_loads_total": "counter",
    "tandem_model_load_duration_seconds": "histogram",
    "tandem_request_body_bytes": "histogram",
    "tandem_gpu_utilization_ratio": "gauge",
    "tandem_gpu_memory_used_bytes": "gauge",
    "tandem_gpu_memory_total_bytes": "gauge",
    "tandem_build_info": "gauge",
}

# Metrics added since that set; docs/metrics.md lists them with the rest.
ADDED_METRICS: dict[str, str] = {
    "tandem_gpu_memory_budget_bytes": "gauge",  # model.json gpu_memory_mb budgets held per GPU
    "tandem_held_connections_total": "counter",  # connections left unread in a model's line under overload
}

# docs/metrics.md's example PromQL over a 30 s window; docs/deployment.md quotes them with [5m].
DOC_QUERIES: dict[str, str] = {
    "mean batch size": "rate(tandem_inference_rows_total[30s]) / rate(tandem_batches_total[30s])",
    "mean latency": "rate(tandem_request_duration_seconds_sum[30s]) / rate(tandem_request_duration_seconds_count[30s])",
    "p99 by model": "histogram_quantile(0.99, sum by (le, model) (rate(tandem_request_duration_seconds_bucket[30s])))",
    "failure ratio": 'sum(rate(tandem_requests_total{outcome!="ok"}[30s])) / sum(rate(tandem_requests_total[30s]))',
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\btandem_[a-zA-Z0-9_]*")


def series_names(families: dict[str, str]) -> set[str]:
    """Every series name a query may use for these families: histograms add _bucket, _sum and _count."""
    names: set[str] = set()
    for name, kind in families.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def family_of(series: str) -> str:
    """The family a series name belongs to (strips a histogram suffix)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in PROTOCOL_METRICS:
            return series.removesuffix(suffix)
    return series


def referenced_metrics(promql: str) -> set[str]:
    """tandem_* names appearing in a PromQL expression."""
    return set(METRIC_NAME.findall(promql))
