"""Writes into the model repository so that a version directory appears whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporters import ExportError
from service.repository import CONFIG_FILE, LABELS_FILE, MODEL_NAME, VERSION, ModelConfig, RepositoryError, read_config

STAGING_PREFIX = ".export-"  # hidden: the server only scans names that start with a letter or digit


@dataclass(frozen=True)
class Target:
    """Where an export goes: repository, model name, version (None = next free) and whether to replace it."""

    repository: Path
    name: str
    version: str | None = None
    replace: bool = False


@dataclass(frozen=True)
class Plan:
    """A checked target: resolved directories and the version number the export will take."""

    root: Path
    model_dir: Path
    version: int
    replace: bool

    @property
    def version_dir(self) -> Path:
        """The final version directory."""
        return self.model_dir / str(self.version)


def plan(target: Target) -> Plan:
    """Check name, version and repository before any work, so that a bad target fails in a second."""
    if not MODEL_NAME.fullmatch(target.name) or ".." in target.name:
        raise ExportError(
            f"model name '{target.name}' would leave the repository or is not allowed: use letters, digits, "
            "'_', '.', '-' (no '/', '..' or absolute paths)"
        )
    if target.repository.exists() and not target.repository.is_dir():
        raise ExportError(f"repository '{target.repository}' is not a directory")
    root = target.repository.resolve()
    model_dir = root / target.name
    if model_dir.is_symlink() and not model_dir.resolve().is_relative_to(root):
        raise ExportError(f"model directory '{target.name}' links outside the repository '{target.repository}'")
    existing = _versions(model_dir)
    if target.version is None:
        version = max(existing, default=0) + 1
    elif VERSION.fullmatch(target.version):
        version = int(target.version)
    else:
        raise ExportError(f"version '{target.version}' must be a positive integer")
    if version in existing and not target.replace:
        raise ExportError(
            f"version {version} of '{target.name}' already exists in '{target.repository}'; "
            "omit --version to take the next one"
        )
    return Plan(root, model_dir, version, target.replace)


def _versions(model_dir: Path) -> set[int]:
    if not model_dir.is_dir():
        return set()
    return {int(child.name) for child in model_dir.iterdir() if child.is_dir() and VERSION.fullmatch(child.name)}


def write(plan: Plan, export_dir: Path, config: Config, labels: list[str] | None) -> Path:
    """Stage the version and model.json in a temp dir inside the repository, then rename them into place."""
    updated = merged_config(plan.model_dir, config)
    try:
        plan.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=plan.root))
    except OSError as exc:
        raise ExportError(f"cannot write into the repository '{plan.root.name}': {exc.strerror}") from None
    try:
        staged_model = staging / plan.model_dir.name
        staged_version = staged_model / str(plan.version)
        staged_version.mkdir(parents=True)
        for child in export_dir.iterdir():
            shutil.move(child, staged_version / child.name)
        if labels is not None:
            (staged_version / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
        (staged_model / CONFIG_FILE).write_text(dumps(updated))
        _publish(plan, staged_model, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return plan.version_dir


def _publish(plan: Plan, staged_model: Path, staging: Path) -> None:
    replaced = staging / "replaced"
    try:
        if not plan.model_dir.exists():
            os.rename(staged_model, plan.model_dir)  # a new model appears with its config and version at once
            return
        if plan.replace and plan.version_dir.exists():
            os.rename(plan.version_dir, replaced)
        os.rename(staged_model / str(plan.version), plan.version_dir)
        os.replace(staged_model / CONFIG_FILE, plan.model_dir / CONFIG_FILE)
    except OSError as exc:
        if replaced.exists() and not plan.version_dir.exists():
            os.rename(replaced, plan.version_dir)  # put the old version back rather than lose it
        raise ExportError(
            f"cannot move version {plan.version} into '{plan.model_dir.name}' ({exc.strerror}); "
            "did another export take it? Run again to take the next version"
        ) from None


@dataclass(frozen=True)
class Config:
    """The model.json keys an export sets: `values` always, `defaults` only where the file has no value."""

    values: dict[str, Any]
    defaults: dict[str, Any]


def merged_config(model_dir: Path, config: Config) -> dict[str, Any]:
    """The new model.json: an existing one keeps its hand-edited keys, the export's keys are replaced."""
    try:
        read_config(model_dir)
    except RepositoryError as exc:
        raise ExportError(f"existing {exc}; fix or remove that model.json") from None
    path = model_dir / CONFIG_FILE
    current: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    signature = (config.values.get("inputs"), config.values.get("outputs"))
    if "inputs" in current and (current["inputs"], current.get("outputs")) != signature:
        print("note: model.json inputs/outputs now describe the new version's signature", file=sys.stderr)
    updated = {**current, **config.values}
    for key, value in config.defaults.items():
        updated.setdefault(key, value)
    try:
        ModelConfig.model_validate(updated)
    except ValidationError as exc:
        raise ExportError(f"model.json would be invalid: {exc.errors()[0]['msg']}") from None
    return updated


def dumps(config: dict[str, Any]) -> str:
    """model.json text for people to read and edit: one key per line, one tensor per line."""
    lines = []
    for key, value in config.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
