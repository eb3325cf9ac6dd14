"""The engine seam: what the front (every dialect's routes) may ask of the side that owns models and batches.

The in-process engine is service.registry.Registry; the routes know only this protocol, never the registry,
batchers or runtimes, so another engine (in another process) can stand behind the same routes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from service.inference import InferRequest, InferResponse
from service.model import ModelInfo


class Engine(Protocol):
    """Lookups, the one infer path, and the control operations the routes parse requests for."""

    registered: set[str]  # models loaded through the control API rather than at start-up

    @property
    def ready(self) -> bool:
        """Not draining, and every model has a ready version."""
        ...

    def names(self) -> list[str]:
        """Known model names, sorted."""
        ...

    def versions(self, name: str) -> Mapping[int, ModelInfo]:
        """Every known version of a model; 404 when unknown."""
        ...

    def get(self, name: str, version: int | None = None, label: str | None = None) -> ModelInfo:
        """The version asked (by number or label), else the default one."""
        ...

    def describe(self, name: str, version: int | None = None) -> ModelInfo:
        """Like get, but a model with no ready version gives its highest version instead of 503."""
        ...

    def default_version(self, name: str) -> int | None:
        """The set-default pin, if any."""
        ...

    def all_models(self) -> Sequence[ModelInfo]:
        """Every version of every model."""
        ...

    async def infer(self, request: InferRequest, gone: Callable[[], bool] | None = None) -> InferResponse:
        """Run one validated request; dropped before it runs once `gone()` says the client has left."""
        ...

    async def in_repository(self, name: str) -> bool:
        """Whether the repository holds a model of that name."""
        ...

    async def sync(self) -> None:
        """Bring lookups up to date (queue depths, statistics) before a route that reports them."""
        ...

    async def repository_names(self) -> set[str]:
        """Every model name in the repository, loaded or not."""
        ...

    async def load(self, name: str) -> ModelInfo:
        """(Re)load a repository model by name; its default version."""
        ...

    async def register(
        self, name: str, overrides: dict[str, float], workers: int | None, *, wait: bool
    ) -> ModelInfo | None:
        """Load a model that is not serving yet, waiting for it or not."""
        ...

    async def unload(self, name: str, version: int | None = None) -> None:
        """Drain and free one version, or every version."""
        ...

    def serving(self, name: str) -> bool:
        """Whether any version of the model takes requests."""
        ...

    async def scale(self, name: str, version: int, workers: int) -> None:
        """Set the batches a version may run at once; 0 pauses it."""
        ...

    async def set_default(self, name: str, version: int) -> None:
        """Pin the version that version-less requests use."""
        ...
