"""What a worker process knows of each model version: a snapshot the engine sends after every change."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from service.errors import QueueFullError
from service.model import UNBOUNDED, Limits, ModelInfo, ModelState, VersionNaming
from service.repository import ModelConfig
from service.tensors import TensorSpec


@dataclass
class StatsView:
    """Statistics as the engine last reported them (refreshed before a route reports them)."""

    entry: dict[str, Any] = field(default_factory=dict)

    def request_finished(self, ok: bool, started_ns: int) -> None:
        """Counted by the engine: requests a worker refuses before queueing are not counted."""

    def as_json(self, name: str, version: int) -> dict[str, Any]:
        """One entry of {"model_stats": [...]}."""
        return self.entry or {"name": name, "version": str(version)}


@dataclass(eq=False)
class ModelView(VersionNaming):
    """A model version seen from a worker process: the engine's LoadedModel, without its runtime and batcher."""

    name: str
    version: int
    config: ModelConfig
    state: ModelState
    reason: str | None
    limits: Limits | None
    loaded_at: float
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    format: str | None
    device: str | None
    degraded: bool | None
    signature_name: str | None
    queue_depth: int = 0
    stats: StatsView = field(default_factory=StatsView)
    admitting: int = 0
    inflight: int = 0  # this worker's requests to the version, sent and not yet answered

    def admit(self) -> None:
        """Refuse before the body is read when this worker alone already has a queue's worth outstanding."""
        if self.room <= 0:
            limit = self.limits.max_queue_size if self.limits else 0
            raise QueueFullError(f"{self.label}: queue is full ({limit} requests waiting)")

    @property
    def room(self) -> int:
        """How many more requests admit() lets in now: a queue's worth, less this worker's outstanding ones."""
        limit = self.limits.max_queue_size if self.limits else 0
        return limit - self.inflight - self.admitting if limit else UNBOUNDED


def describe(model: ModelInfo, dynamic: bool) -> dict[str, Any]:
    """A version as plain data; `dynamic` adds its queue depth and statistics."""
    entry: dict[str, Any] = {
        "name": model.name,
        "version": model.version,
        "config": model.config.model_dump(mode="json"),
        "state": model.state.value,
        "reason": model.reason,
        "limits": dataclasses.asdict(model.limits) if model.limits else None,
        "loaded_at": model.loaded_at,
        "inputs": [_spec(s) for s in model.inputs],
        "outputs": [_spec(s) for s in model.outputs],
        "format": model.format,
        "device": model.device,
        "degraded": model.degraded,
        "signature_name": model.signature_name,
    }
    if dynamic:
        entry["queue_depth"] = model.queue_depth
        entry["stats"] = model.stats.as_json(model.name, model.version)
    return entry


def view(entry: dict[str, Any]) -> ModelView:
    """The ModelView `describe` made plain data of."""
    limits = entry["limits"]
    if limits is not None:
        limits = Limits(**{**limits, "preferred_batch_sizes": tuple(limits["preferred_batch_sizes"])})
    return ModelView(
        name=entry["name"],
        version=entry["version"],
        config=ModelConfig.model_validate(entry["config"]),
        state=ModelState(entry["state"]),
        reason=entry["reason"],
        limits=limits,
        loaded_at=entry["loaded_at"],
        inputs=[_tensor(s) for s in entry["inputs"]],
        outputs=[_tensor(s) for s in entry["outputs"]],
        format=entry["format"],
        device=entry["device"],
        degraded=entry["degraded"],
        signature_name=entry["signature_name"],
        queue_depth=entry.get("queue_depth", 0),
        stats=StatsView(entry.get("stats", {})),
    )


def _spec(spec: TensorSpec) -> list[Any]:
    return [spec.name, spec.datatype, list(spec.shape), spec.graph_name, spec.text]


def _tensor(fields: list[Any]) -> TensorSpec:
    name, datatype, shape, graph_name, text = fields
    return TensorSpec(name, datatype, tuple(shape), graph_name, text)
