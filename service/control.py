"""The engine in-process: the registry plus the control operations that the HTTP and gRPC routes parse and call."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from service import repository
from service.errors import (
    BadRequestError,
    ConflictError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    VersionNotFoundError,
)
from service.model import LoadedModel
from service.registry import Registry
from service.repository import ModelSource

log = logging.getLogger("tandem.registry")


class LocalEngine(Registry):
    """The Engine protocol in this process: lookups and infer from the registry, and load/unload/scale/pin."""

    async def find(self, name: str) -> ModelSource | None:
        """A repository model by name (never by path or URL), read off the event loop."""
        return await asyncio.to_thread(repository.find_model, self.settings.models_dir, name)

    async def in_repository(self, name: str) -> bool:
        """Whether the repository holds a model of that name."""
        return await self.find(name) is not None

    async def sync(self) -> None:
        """Nothing to fetch: this engine is in-process (a remote engine refreshes its snapshot here)."""

    async def repository_names(self) -> set[str]:
        """Every model name in the repository, loaded or not; empty when it cannot be read."""
        try:
            return set(await asyncio.to_thread(repository.scan, self.settings.models_dir))
        except (repository.RepositoryError, OSError):
            return set()

    async def load(self, name: str) -> LoadedModel:
        """(Re)load a repository model by name; 404 when the repository has none, 400 when no version comes up."""
        source = await self.find(name)
        if source is None:
            raise ModelNotFoundError(f"model '{name}' not found in the repository")
        return await self._load(source)

    async def _load(
        self, source: ModelSource, overrides: dict[str, float] | None = None, workers: int | None = None
    ) -> LoadedModel:
        was_serving = self.serving(source.name)
        models = await self.load_source(source, overrides)
        ready = [m for m in models if m.ready]
        if not ready:
            reasons = [m.reason for m in models if m.reason] + [source.error or "no version to load"]
            raise ModelLoadError(f"failed to load model '{source.name}': {reasons[0]}")
        if not was_serving:
            self.registered.add(source.name)
        if workers == 0:
            for model in ready:
                self._scale(model.name, model.version, 0)
        return self.get(source.name)

    async def register(
        self, name: str, overrides: dict[str, float], workers: int | None, *, wait: bool
    ) -> LoadedModel | None:
        """Load a repository model that is not serving yet (TorchServe's register); in the background unless `wait`."""
        if self.serving(name):
            raise ConflictError(f'Model "{name}" is already registered')
        source = await self.find(name)
        if source is None:
            raise ModelNotFoundError(f"Model not found in the repository: {name}")
        size, preferred = overrides.get("max_batch_size"), source.config.preferred_batch_sizes
        if size is not None and size > 1 and preferred and max(preferred) > size:
            raise BadRequestError(f"batch_size {int(size)} is below the model's preferred_batch_sizes {preferred}")
        self.registered.add(name)
        if wait:
            return await self._load(source, overrides, workers)

        async def load() -> None:
            try:
                await self._load(source, overrides, workers)
            except Exception as exc:  # nobody awaits an asynchronous registration: log how it ended
                log.error("asynchronous registration of model %s failed: %s", name, exc)

        task = asyncio.get_running_loop().create_task(load())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return None

    def serving(self, name: str) -> bool:
        """Whether any version of `name` takes requests."""
        return any(m.ready for m in self._models.get(name, {}).values())

    async def scale(self, name: str, version: int, workers: int) -> None:
        """Set the batches the version may run at once; 0 pauses it (its requests get 503)."""
        self._scale(name, version, workers)

    def _scale(self, name: str, version: int, workers: int) -> None:
        model = self.get(name, version)
        if model.batcher is None or model.limits is None or not model.ready:
            raise ModelNotReadyError(f"{model.label} is not ready: {model.reason or model.state.value.lower()}")
        model.batcher.set_max_concurrent_batches(workers)
        model.limits = dataclasses.replace(model.limits, max_concurrent_batches=workers)
        self.changed()

    async def set_default(self, name: str, version: int) -> None:
        """Pin the version that version-less URLs use, in every dialect."""
        if version not in self.versions(name):
            raise VersionNotFoundError(f"model '{name}' has no version {version}")
        self._default[name] = version
        self.changed()
