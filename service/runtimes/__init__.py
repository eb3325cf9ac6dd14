"""Runtimes turn an artifact on disk into a callable model; a dict maps each format to its loader."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.tensors import TensorSpec as TensorSpec

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How to place and size a runtime; filled from settings and model.json."""

    device: Device = "auto"
    gpu_device_id: int = 0
    allow_cpu_fallback: bool = True
    intra_op_threads: int = 0
    signature_name: str | None = None
    # model.json placement (service.runtimes.placement): the model's budget on each of its GPUs, shared by its
    # instances there (0 = no limit), how many instances share it, and every GPU the model is placed on.
    gpu_memory_bytes: int = 0
    instances_per_device: int = 1
    model_devices: tuple[int, ...] = ()


class Runtime(Protocol):
    """A loaded model: its signature, where it runs, and a blocking predict."""

    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str
    degraded: bool
    signature_name: str

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; blocking. Called on a worker thread, or on the event loop for very fast models."""
        ...

    def close(self) -> None:
        """Free the session and its device memory."""
        ...


# format -> module with a `load(path, options) -> Runtime`; imported on first use so that the
# server never imports TensorFlow unless a SavedModel is actually served.
RUNTIME_MODULES: dict[str, str] = {
    "onnx": "service.runtimes.onnx",
    "savedmodel": "service.runtimes.savedmodel",
}

ARTIFACT_NAMES: dict[str, str] = {"onnx": "model.onnx", "savedmodel": "model.savedmodel"}


def load_runtime(fmt: str, artifact: Path, options: RuntimeOptions) -> Runtime:
    """Load `artifact` with the runtime registered for `fmt`."""
    module = importlib.import_module(RUNTIME_MODULES[fmt])
    runtime: Runtime = module.load(artifact, options)
    return runtime


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.999)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def describe_gpus() -> list[str]:
    """One line per NVIDIA GPU (name, memory, driver, CUDA driver API); empty on a CPU-only host."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library or no driver: a CPU-only host
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        lines = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
            name = pynvml.nvmlDeviceGetName(handle)
            lines.append(
                f"cuda:{index} {name}, {total:.1f} GiB, driver {driver}, CUDA {cuda // 1000}.{cuda % 1000 // 10}"
            )
        return lines
    finally:
        pynvml.nvmlShutdown()


def gpu_count() -> int:
    """Number of NVIDIA GPUs visible through NVML; 0 where there is no driver or no nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()
