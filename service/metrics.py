"""Every Prometheus metric tandem exports, declared once against a registry passed in."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BODY_BUCKETS = tuple(float(4**i) for i in range(4, 14))  # 256 B .. 64 MiB
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `tandem serve --workers N` for every process it starts
ROW_BUCKETS = tuple(float(2**i) for i in range(0, 13))  # 1 .. 4096 rows


class Metrics:
    """The metric set of docs/metrics.md, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # The *_created series double what Prometheus stores and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        model_version = ("model", "version")
        device = (*model_version, "device")
        self.requests = Counter(
            "tandem_requests_total",
            "Requests that reached a model route, by final status.",
            ("dialect", "model", "version", "code", "outcome"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "tandem_request_duration_seconds",
            "Arrival to response, successful requests only.",
            ("dialect", *model_version),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_duration = Histogram(
            "tandem_queue_duration_seconds",
            "Enqueue to batch start, per request that ran.",
            model_version,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_duration = Histogram(
            "tandem_compute_duration_seconds",
            "One runtime call (one batch).",
            device,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "tandem_batch_rows", "Rows per executed batch.", device, buckets=ROW_BUCKETS, registry=registry
        )
        self.inference_rows = Counter("tandem_inference_rows", "Rows inferred.", device, registry=registry)
        self.batches = Counter("tandem_batches", "Runtime calls (batches).", device, registry=registry)
        self.queue_requests = Gauge(
            "tandem_queue_requests",
            "Requests waiting to join a batch.",
            model_version,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.inflight_batches = Gauge(
            "tandem_inflight_batches", "Batches executing now.", device, registry=registry, multiprocess_mode="livesum"
        )
        self.model_ready = Gauge(
            "tandem_model_ready",
            "1 if the version is READY.",
            (*model_version, "format", "device"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.model_loads = Counter(
            "tandem_model_loads", "Load and reload attempts.", ("model", "outcome"), registry=registry
        )
        self.model_load_duration = Histogram(
            "tandem_model_load_duration_seconds",
            "Load time, warm-up included.",
            ("model", "format", "device"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.gpu_memory_budget = Gauge(
            "tandem_gpu_memory_budget_bytes",
            "GPU memory budgeted (model.json gpu_memory_mb) to the model versions loaded on each GPU.",
            ("device",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.held_connections = Counter(
            "tandem_held_connections",
            "Connections answered 503 from the request head for a full queue, then left unread until the model "
            "had room (overload).",
            ("model",),
            registry=registry,
        )
        self.request_body_bytes = Histogram(
            "tandem_request_body_bytes",
            "Decoded request body size.",
            ("dialect",),
            buckets=BODY_BUCKETS,
            registry=registry,
        )
        self.build_info = Gauge(
            "tandem_build_info",
            "Versions of tandem and its runtimes.",
            ("version", "onnxruntime", "tensorflow"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.build_info.labels(_version("tandem"), _version("onnxruntime-gpu"), _version("tensorflow")).set(1)
        registry.register(GpuCollector())
        # Label sets are bounded (dialects x loaded model versions x codes), so these caches are too.
        self._request_children: dict[tuple[str, str, str, int, str], Counter] = {}
        self._duration_children: dict[tuple[str, ...], Histogram] = {}
        self._body_children: dict[str, Histogram] = {}
        self.combined: CollectorRegistry | None = None  # every process's metrics, when there are several

    def observe_request(
        self, dialect: str, model: str, version: str, code: int, outcome: str, seconds: float | None
    ) -> None:
        """Count one request by final status, and time it if it succeeded (children cached: hot path)."""
        key = (dialect, model, version, code, outcome)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(dialect, model, version, str(code), outcome)
        counter.inc()
        if seconds is not None:
            timer = self._duration_children.get(key[:3])
            if timer is None:
                timer = self._duration_children[key[:3]] = self.request_duration.labels(dialect, model, version)
            timer.observe(seconds)

    def observe_body(self, dialect: str, size: int) -> None:
        """The size of one decoded request body (child cached: hot path)."""
        child = self._body_children.get(dialect)
        if child is None:
            child = self._body_children[dialect] = self.request_body_bytes.labels(dialect)
        child.observe(size)

    def batch_observer(self, model: str, version: str, device: str) -> BatchMetrics:
        """Children bound to one model version, handed to its batcher."""
        return BatchMetrics(self, model, version, device)


def exposition(metrics: Metrics) -> CollectorRegistry:
    """What /metrics serves: this process's registry, or every process's when they share a metrics directory."""
    if os.environ.get(MULTIPROC_ENV) is None:
        return metrics.registry
    if metrics.combined is None:
        from prometheus_client import multiprocess

        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        combined.register(GpuCollector())
        metrics.combined = combined
    return metrics.combined


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


class BatchMetrics:
    """The batcher's observer: pre-bound label children so the hot path does no label lookups."""

    def __init__(self, metrics: Metrics, model: str, version: str, device: str) -> None:
        self._queue = metrics.queue_requests.labels(model, version)
        self._queue_wait = metrics.queue_duration.labels(model, version)
        self._compute = metrics.compute_duration.labels(model, version, device)
        self._rows = metrics.batch_rows.labels(model, version, device)
        self._rows_total = metrics.inference_rows.labels(model, version, device)
        self._batches = metrics.batches.labels(model, version, device)
        self._inflight = metrics.inflight_batches.labels(model, version, device)

    def queue_depth(self, depth: int) -> None:
        """Requests waiting now."""
        self._queue.set(depth)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        """A batch left the queue."""
        for wait in queue_waits_s:
            self._queue_wait.observe(wait)

    def batch_finished(self, rows: int, compute_s: float, ok: bool) -> None:
        """A runtime call returned."""
        self._compute.observe(compute_s)
        self._rows.observe(rows)
        self._rows_total.inc(rows)
        self._batches.inc()

    def inflight(self, batches: int) -> None:
        """Batches executing now."""
        self._inflight.set(batches)


class GpuCollector(Collector):
    """NVML utilisation and memory per device, sampled at scrape; absent where no GPU exists."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield the GPU gauges, or nothing without NVML."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no library, no driver: a CPU-only host
            return
        util = GaugeMetricFamily("tandem_gpu_utilization_ratio", "GPU utilisation, 0-1.", labels=["device"])
        used = GaugeMetricFamily("tandem_gpu_memory_used_bytes", "GPU memory in use.", labels=["device"])
        total = GaugeMetricFamily("tandem_gpu_memory_total_bytes", "GPU memory in all.", labels=["device"])
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([f"cuda:{index}"], pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                used.add_metric([f"cuda:{index}"], float(memory.used))
                total.add_metric([f"cuda:{index}"], float(memory.total))
        finally:
            pynvml.nvmlShutdown()
        yield from (util, used, total)
