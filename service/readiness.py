"""Server readiness as the health routes report it: loading, nothing to serve, or a model with no ready version."""

from __future__ import annotations

from collections.abc import Mapping

from service.model import LoadedModel, ModelState
from service.settings import Settings

SHOWN = 3  # models named in one reason; the rest are counted


def unready_reason(
    models: Mapping[str, Mapping[int, LoadedModel]],
    closing: bool,
    loaded: bool,
    scan_error: str | None,
    settings: Settings,
) -> str | None:
    """None when ready; else why not. Strict: every model needs a READY version; relaxed: at least one does."""
    if closing:
        return "shutting down"
    if not loaded:
        loading = [m.label for versions in models.values() for m in versions.values() if m.state is ModelState.LOADING]
        return f"loading {_some(loading) if loading else 'the model repository'}"
    if not models:
        return scan_error or f"the model repository '{settings.models_dir.name}' has no models"
    missing = [name for name, versions in sorted(models.items()) if not any(m.ready for m in versions.values())]
    if not missing or (not settings.strict_readiness and len(missing) < len(models)):
        return None
    return _some([_why(name, models[name]) for name in missing])


def _why(name: str, versions: Mapping[int, LoadedModel]) -> str:
    if not versions:
        return f"model '{name}' has no version to serve"
    latest = versions[max(versions)]
    if latest.state is ModelState.LOADING:
        return f"loading {latest.label}"
    return f"{latest.label} is {latest.state.value}" + (f": {latest.reason}" if latest.reason else "")


def _some(items: list[str]) -> str:
    more = len(items) - SHOWN
    return ", ".join(items[:SHOWN]) + (f" and {more} more" if more > 0 else "")
