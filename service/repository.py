"""Reads the model repository on disk into ModelConfigs; holds no state."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import VersionNotFoundError
from service.runtimes import ARTIFACT_NAMES
from service.tensors import DATATYPE_TO_NUMPY

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION = re.compile(r"[1-9][0-9]{0,18}")
LABEL = re.compile(r"[A-Za-z0-9_]+")
CONFIG_FILE = "model.json"
LABELS_FILE = "labels.txt"


class TensorConfig(BaseModel):
    """One input or output in model.json: name, V2 datatype and shape (-1 = dynamic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPE_TO_NUMPY:
            raise ValueError(f"unknown datatype '{value}'; expected one of {sorted(DATATYPE_TO_NUMPY)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 for d in value):
            raise ValueError("dims must be >= 0, or -1 for a dynamic dim")
        return value


class ModelConfig(BaseModel):
    """model.json: every key optional, defaults come from the artifact and the server settings."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Must equal the directory name when given.")
    format: Literal["onnx", "savedmodel"] | None = Field(None, description="Detected from the artifact if absent.")
    inputs: list[TensorConfig] | None = Field(None, description="Checked against the artifact when given.")
    outputs: list[TensorConfig] | None = Field(None, description="Checked against the artifact when given.")
    signature_name: str | None = Field(None, description="SavedModel signature to serve.")
    max_batch_size: int | None = Field(None, ge=0, description="Rows per runtime call; <= 1 turns batching off.")
    max_batch_delay_ms: float | None = Field(None, ge=0, le=10_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int | None = Field(None, ge=1)
    queue_timeout_ms: float | None = Field(None, ge=0)
    request_timeout_ms: float | None = Field(None, gt=0)
    max_concurrent_batches: int | None = Field(None, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] | None = None
    devices: list[int] | None = Field(None, description="GPU indices to place the model on; default: gpu_device_id.")
    instances: int = Field(1, ge=1, le=16, description="Runtime sessions per GPU; the CPU always gets one.")
    gpu_memory_mb: int | None = Field(None, ge=1, description="GPU memory budget per GPU (MiB), shared by instances.")
    version_policy: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = Field(1, ge=1, description="With version_policy=latest: how many of the highest versions.")
    versions: list[int] = Field(default_factory=list, description="With version_policy=specific.")
    version_labels: dict[str, int] = Field(default_factory=dict, description="TF Serving labels -> version.")

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("preferred_batch_sizes must be positive")
        return sorted(set(value))

    @field_validator("devices")
    @classmethod
    def _device_indices(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(i < 0 for i in value) or len(set(value)) != len(value)):
            raise ValueError("devices must be a non-empty list of distinct GPU indices (0, 1, ...)")
        return value

    @field_validator("version_labels")
    @classmethod
    def _labels(cls, value: dict[str, int]) -> dict[str, int]:
        for label, version in value.items():
            if not LABEL.fullmatch(label) or version < 1:
                raise ValueError(f"label '{label}' must match [A-Za-z0-9_]+ and point at a positive version")
        return value

    @model_validator(mode="after")
    def _specific_needs_versions(self) -> ModelConfig:
        if self.version_policy == "specific" and not self.versions:
            raise ValueError("version_policy 'specific' needs a non-empty 'versions' list")
        return self

    @model_validator(mode="after")
    def _gpu_keys_need_a_gpu(self) -> ModelConfig:
        if self.device == "cpu" and (self.devices is not None or self.gpu_memory_mb is not None or self.instances > 1):
            raise ValueError("device 'cpu' takes no devices, instances or gpu_memory_mb (they place GPU sessions)")
        return self


class RepositoryError(Exception):
    """A model directory that cannot be served; the message names the problem, never a full path."""


@dataclass
class ModelSource:
    """What the repository holds for one model: its config and version directories."""

    name: str
    directory: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None


def parse_version(text: str | None, name: str) -> int | None:
    """A requested version: None asks for the default; else a positive decimal int64 without leading zeros (ASCII
    digits only: `str.isdigit` also accepts "²", which `int` refuses), anything else 404 as an unknown version."""
    if text is None:
        return None
    if VERSION.fullmatch(text) is None or int(text) > 2**63 - 1:
        raise VersionNotFoundError(f"model '{name}' has no version '{text:.40}'")
    return int(text)


def read_config(model_dir: Path) -> ModelConfig:
    """Parse model.json, or defaults when it is absent; unknown keys are an error naming the key."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        config = ModelConfig.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        # Every problem, so an unknown key is named even beside a missing one.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'model.json'}: {e['msg']}" for e in exc.errors())
        raise RepositoryError(f"model.json: {problems}") from None
    if config.name is not None and config.name != model_dir.name:
        raise RepositoryError(f"model.json: name '{config.name}' differs from directory '{model_dir.name}'")
    return config


def detect_format(version_dir: Path) -> str | None:
    """Which artifact a version directory holds, if any (TF Serving's bare saved_model.pb counts as a SavedModel)."""
    for fmt, artifact in ARTIFACT_NAMES.items():
        if (version_dir / artifact).exists():
            return fmt
    return "savedmodel" if _bare_savedmodel(version_dir) else None


def artifact_path(version_dir: Path, fmt: str) -> Path:
    """Where the artifact of `fmt` lives: in the version directory, or that directory itself (TF Serving's layout)."""
    path = version_dir / ARTIFACT_NAMES[fmt]
    if fmt == "savedmodel" and not path.exists() and _bare_savedmodel(version_dir):
        return version_dir
    return path


def _bare_savedmodel(version_dir: Path) -> bool:
    """TF Serving's layout: <base path>/<version>/saved_model.pb (with variables/) directly in the version directory."""
    return (version_dir / "saved_model.pb").is_file()


def read_model(model_dir: Path) -> ModelSource:
    """One model directory: its config and numeric version directories; errors are recorded, not raised."""
    source = ModelSource(model_dir.name, model_dir)
    try:
        source.config = read_config(model_dir)
        children = [child for child in model_dir.iterdir() if child.is_dir() and VERSION.fullmatch(child.name)]
    except RepositoryError as exc:
        source.error = str(exc)
        return source
    except OSError as exc:  # the message would hold the path: name the cause only
        source.error = f"cannot read the model directory ({type(exc).__name__})"
        return source
    source.versions = {int(child.name): child for child in children}
    if not source.versions:
        source.error = "no version directories (positive integers) found"
    return source


def scan(models_dir: Path) -> dict[str, ModelSource]:
    """Every model directory under `models_dir` whose name is a valid model name."""
    if not models_dir.is_dir():
        raise RepositoryError(f"model repository '{models_dir.name}' is not a directory")
    sources = {}
    for child in sorted(models_dir.iterdir()):
        if child.is_dir() and MODEL_NAME.fullmatch(child.name):
            sources[child.name] = read_model(child)
    return sources


def scan_or_reason(models_dir: Path) -> tuple[dict[str, ModelSource], str | None]:
    """Like scan, but a repository that cannot be read gives no models and the reason (which names no path)."""
    try:
        return scan(models_dir), None
    except RepositoryError as exc:
        return {}, f"cannot read the model repository ({exc})"
    except OSError as exc:
        return {}, f"cannot read the model repository ({type(exc).__name__})"


def find_model(models_dir: Path, name: str) -> ModelSource | None:
    """Look a model up by name without joining untrusted text into a path: match against the listing."""
    if not MODEL_NAME.fullmatch(name):
        return None
    for child in models_dir.iterdir():
        if child.name == name and child.is_dir():
            return read_model(child)
    return None


def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions the model's version policy asks to load, highest first."""
    ordered = sorted(available, reverse=True)
    if config.version_policy == "all":
        return ordered
    if config.version_policy == "specific":
        return [v for v in ordered if v in set(config.versions)]
    return ordered[: config.num_versions]


def read_labels(version_dir: Path) -> list[str] | None:
    """Class labels, one per line, when labels.txt exists."""
    path = version_dir / LABELS_FILE
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
