"""Where a model's runtime instances go: model.json `devices`, `instances` and `gpu_memory_mb` against the GPUs here."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from service.errors import ModelLoadError
from service.runtimes import RuntimeOptions

MIB = 2**20


@dataclass(frozen=True)
class Gpu:
    """One GPU as CUDA numbers it, with its memory in all and free now (bytes)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    uuid: str = ""


GpuInventory = Callable[[], list[Gpu]]


def gpu_inventory() -> list[Gpu]:
    """The GPUs CUDA will number, read through NVML; empty without a driver, a device or nvidia-ml-py."""
    return visible_gpus(_nvml_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _nvml_gpus() -> list[Gpu]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library or no driver: a CPU-only host
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(Gpu(index, _text(name), int(memory.total), int(memory.free), _text(uuid)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_gpus(gpus: Sequence[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves, renumbered from 0 in its order as CUDA does (NVML ignores it).

    Entries are indices or `GPU-` UUIDs (a unique prefix is enough); like CUDA, the list ends at the first entry
    that names no GPU.
    """
    if cuda_visible_devices is None:
        return list(gpus)
    visible: list[Gpu] = []
    seen: set[int] = set()
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isascii() and entry.isdigit():
            found = [g for g in gpus if g.index == int(entry)]
        else:
            found = [g for g in gpus if entry.startswith("GPU-") and g.uuid.startswith(entry)]
        if len(found) != 1 or found[0].index in seen:
            break
        seen.add(found[0].index)
        visible.append(dataclasses.replace(found[0], index=len(visible)))
    return visible


@dataclass(frozen=True)
class Placement:
    """The runtime options of each instance of one model version, and the memory it budgets on each GPU."""

    instances: tuple[RuntimeOptions, ...]
    budgets: Mapping[int, int]  # GPU index -> bytes; empty when the model has no budget or runs on CPU


def device_names(indices: Sequence[int]) -> str:
    """How messages list GPUs: "cuda:0, cuda:1"."""
    return ", ".join(f"cuda:{i}" for i in indices) or "none"


def plan(
    label: str,
    devices: Sequence[int] | None,
    instances: int,
    gpu_memory_mb: int | None,
    base: RuntimeOptions,
    gpus: Sequence[Gpu],
) -> Placement:
    """Spread `instances` per GPU over `devices` (default: the server's GPU); one session where no GPU is used.

    Refuses, naming the model and the GPU, a device this host does not have and a budget larger than the device.
    """
    if base.device == "cpu" or not gpus:
        if devices and base.device == "cuda" and not base.allow_cpu_fallback:
            raise ModelLoadError(f"{label} is placed on {device_names(devices)}, but no GPU is visible")
        return Placement((base,), {})  # exactly one session, as on a host without GPUs
    wanted = tuple(devices) if devices else (base.gpu_device_id,)
    by_index = {gpu.index: gpu for gpu in gpus}
    for index in wanted:
        if index not in by_index:
            present = device_names(list(by_index))
            raise ModelLoadError(f"{label} is placed on cuda:{index}, which does not exist (this host has {present})")
    budget = (gpu_memory_mb or 0) * MIB
    for index in wanted if budget else ():
        total = by_index[index].total_bytes
        if budget > total:
            raise ModelLoadError(
                f"{label} asks for {gpu_memory_mb} MiB on cuda:{index}, which has {total // MIB} MiB in all"
            )
    options = tuple(
        dataclasses.replace(
            base, gpu_device_id=index, gpu_memory_bytes=budget, instances_per_device=instances, model_devices=wanted
        )
        for _ in range(instances)
        for index in wanted  # interleaved, so that a lightly loaded model already spreads over its GPUs
    )
    return Placement(options, dict.fromkeys(wanted, budget) if budget else {})


class DeviceLedger:
    """GPU memory budgeted to the model versions this process holds, per GPU: a new budget must fit beside them."""

    def __init__(self, on_change: Callable[[int, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self._on_change = on_change

    def held(self) -> dict[int, int]:
        """Bytes budgeted per GPU index now."""
        with self._lock:
            return dict(self._held)

    def reserve(self, label: str, budgets: Mapping[int, int], gpus: Sequence[Gpu]) -> Callable[[], None]:
        """Hold `budgets` or refuse with the arithmetic; returns the release (safe to call more than once)."""
        by_index = {gpu.index: gpu for gpu in gpus}
        with self._lock:
            for index, budget in budgets.items():
                gpu, held = by_index[index], self._held.get(index, 0)
                available = max(0, min(gpu.total_bytes - held, gpu.free_bytes))
                if budget > available:
                    raise ModelLoadError(
                        f"{label} does not fit on cuda:{index}: it asks for {budget // MIB} MiB and "
                        f"{available // MIB} MiB are available ({gpu.total_bytes // MIB} MiB in all, "
                        f"{held // MIB} MiB budgeted to loaded models, {gpu.free_bytes // MIB} MiB free)"
                    )
            self._change(budgets, +1)
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._change(budgets, -1)

        return release

    def _change(self, budgets: Mapping[int, int], sign: int) -> None:
        for index, budget in budgets.items():
            self._held[index] = self._held.get(index, 0) + sign * budget
            if self._on_change is not None:
                self._on_change(index, self._held[index])
