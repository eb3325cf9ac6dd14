"""One model version as served (LoadedModel), its lifecycle states and its effective limits."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from service.errors import ModelNotReadyError, QueueFullError, VersionNotFoundError
from service.repository import ModelConfig
from service.stats import ModelStats
from service.tensors import TensorSpec

if TYPE_CHECKING:
    from service.batcher import DynamicBatcher
    from service.runtimes import Runtime
    from service.settings import Settings


class ModelState(enum.StrEnum):
    """Lifecycle of one model version (V2 repository-index names)."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Limits:
    """The effective batching and timeout values of one model: model.json over server settings."""

    max_batch_size: int
    max_batch_delay_ms: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    queue_timeout_ms: float
    request_timeout_ms: float
    max_concurrent_batches: int

    @classmethod
    def resolve(cls, config: ModelConfig, settings: Settings, batched: bool) -> Limits:
        """Merge per-model overrides onto server defaults; a model without a batch dim never batches."""

        def pick(name: str) -> float:
            value = getattr(config, name)
            return value if value is not None else getattr(settings, name)  # type: ignore[no-any-return]

        return cls(
            max_batch_size=int(pick("max_batch_size")) if batched else 0,
            max_batch_delay_ms=pick("max_batch_delay_ms"),
            preferred_batch_sizes=tuple(config.preferred_batch_sizes),
            max_queue_size=int(pick("max_queue_size")),
            queue_timeout_ms=pick("queue_timeout_ms"),
            request_timeout_ms=pick("request_timeout_ms"),
            max_concurrent_batches=int(pick("max_concurrent_batches")),
        )


class StatsInfo(Protocol):
    """What the routes read and feed of a version's statistics."""

    def request_finished(self, ok: bool, started_ns: int) -> None:
        """One request left the model."""
        ...

    def as_json(self, name: str, version: int) -> dict[str, Any]:
        """One entry of {"model_stats": [...]}."""
        ...


class ModelInfo(Protocol):
    """One model version as the routes see it: a LoadedModel in-process, a snapshot of one in a worker process."""

    name: str
    version: int
    config: ModelConfig
    state: ModelState
    reason: str | None
    limits: Limits | None
    loaded_at: float
    admitting: int

    @property
    def stats(self) -> StatsInfo:
        """Cumulative statistics."""
        ...

    @property
    def label(self) -> str:
        """How messages name this version."""
        ...

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input signature."""
        ...

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output signature."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the version takes requests."""
        ...

    @property
    def format(self) -> str | None:
        """Artifact format."""
        ...

    @property
    def device(self) -> str | None:
        """Where it runs; None until loaded."""
        ...

    @property
    def degraded(self) -> bool | None:
        """GPU wanted, CPU used."""
        ...

    @property
    def signature_name(self) -> str | None:
        """The served signature."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join a batch."""
        ...

    def admit(self) -> None:
        """Refuse (503) before the body is read when the queue is full."""
        ...

    @property
    def room(self) -> int:
        """How many more requests admit() would let in now."""
        ...


UNBOUNDED = 1 << 30  # room() of a version with no queue to fill


class VersionNaming:
    """What every view of a model version derives from its name, version and state."""

    name: str
    version: int
    state: ModelState

    @property
    def label(self) -> str:
        """How messages name this version."""
        return f"model '{self.name}' version {self.version}"

    @property
    def ready(self) -> bool:
        """Whether the version takes requests."""
        return self.state is ModelState.READY


@dataclass(eq=False)
class LoadedModel(VersionNaming):
    """One model version as served: its signature, limits, runtime and batcher."""

    name: str
    version: int
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    runtime: Runtime | None = None
    batcher: DynamicBatcher | None = None
    limits: Limits | None = None
    loaded_at: float = field(default_factory=time.time)
    stats: ModelStats = field(default_factory=ModelStats)
    admitting: int = 0  # requests past admission whose bodies are being read and decoded, not yet queued

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input signature (empty until loaded)."""
        return self.runtime.inputs if self.runtime else []

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output signature (empty until loaded)."""
        return self.runtime.outputs if self.runtime else []

    @property
    def format(self) -> str | None:
        """The artifact format once loaded ("onnx", "savedmodel"); model.json's, if any, before."""
        return self.runtime.format if self.runtime else self.config.format

    @property
    def device(self) -> str | None:
        """Where the runtime runs ("cpu", "cuda:0"); None until loaded."""
        return self.runtime.device if self.runtime else None

    @property
    def degraded(self) -> bool | None:
        """True when a GPU was wanted but the runtime fell back to CPU; None until loaded."""
        return self.runtime.degraded if self.runtime else None

    @property
    def signature_name(self) -> str | None:
        """The served signature's name; None until loaded."""
        return self.runtime.signature_name if self.runtime else None

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join a batch."""
        return self.batcher.queue_depth if self.batcher else 0

    def admit(self) -> None:
        """Refuse a request before its body is read when the queue, counting those being decoded, is full.

        Refusing is then nearly free, so an overloaded model keeps its CPU for the requests it can serve.
        """
        if self.room <= 0:
            assert self.limits is not None
            limit = self.limits.max_queue_size
            self.stats.request_finished(False, time.perf_counter_ns())
            message = f"{self.label}: queue is full ({limit} requests waiting)"
            raise QueueFullError(message, retry_after_s=self.batcher.retry_after_s() if self.batcher else 1)

    @property
    def room(self) -> int:
        """How many more requests admit() lets in now: the queue's free places, less those being decoded."""
        if self.batcher is None or self.limits is None:
            return UNBOUNDED
        return self.limits.max_queue_size - self.batcher.queue_depth - self.admitting


Version = TypeVar("Version", bound="ModelInfo")


def resolve(
    name: str, versions: Mapping[int, Version], version: int | None, label: str | None, pinned: int | None
) -> Version:
    """The version asked (by number or `version_labels` label), else the pinned default, else the highest READY."""
    if label is not None:
        version = next(iter(versions.values())).config.version_labels.get(label)
        if version is None or version not in versions:
            raise VersionNotFoundError(f"model '{name}' has no label '{label}'")
    if version is not None:
        try:
            return versions[version]
        except KeyError:
            raise VersionNotFoundError(f"model '{name}' has no version {version}") from None
    if pinned is not None and pinned in versions:
        return versions[pinned]
    ready = [v for v, m in versions.items() if m.ready]
    if ready:
        return versions[max(ready)]
    latest = versions[max(versions)]
    raise ModelNotReadyError(f"model '{name}' has no ready version ({latest.reason or latest.state.value})")
