"""ONNX Runtime sessions: CUDA provider first when a GPU is usable, CPU otherwise, verified after creation."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import BadRequestError, InternalError, ModelLoadError, OutOfMemoryError
from service.runtimes import RuntimeOptions, TensorSpec, available_cpus, gpu_count

log = logging.getLogger("tandem.runtime.onnx")

_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_CUDA = "CUDAExecutionProvider"
_OOM = re.compile(r"Failed to allocate memory|out of memory|CUDNN_STATUS_ALLOC_FAILED", re.IGNORECASE)


def _spec(node: Any) -> TensorSpec:
    datatype = _ORT_TO_DATATYPE.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{node.name}' has type {node.type}, which tandem cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, datatype, shape, text=datatype == "BYTES")


def cuda_wanted(options: RuntimeOptions) -> bool:
    """Whether to ask for the CUDA provider: never for cpu; for auto only when a GPU is visible."""
    if options.device == "cpu" or _CUDA not in ort.get_available_providers():
        return False
    return options.device == "cuda" or gpu_count() > 0


def _session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or available_cpus()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads steal the core the event loop needs between batches.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def cuda_provider_options(options: RuntimeOptions) -> dict[str, str | int]:
    """The CUDA provider's options: the device, and with a budget this session's share as its arena limit.

    `gpu_mem_limit` caps ONNX Runtime's memory arena (bytes); `kSameAsRequested` grows the arena by what a run asks
    for, instead of doubling, so that a budget is not lost to rounding. The CUDA context and the cuBLAS/cuDNN handles
    lie outside the arena.
    """
    provider: dict[str, str | int] = {"device_id": options.gpu_device_id}
    if options.gpu_memory_bytes > 0:
        provider["gpu_mem_limit"] = options.gpu_memory_bytes // max(1, options.instances_per_device)
        provider["arena_extend_strategy"] = "kSameAsRequested"
    return provider


def session_providers(options: RuntimeOptions, want_cuda: bool) -> list[str | tuple[str, dict[str, str | int]]]:
    """The providers a session asks for, in order: CUDA with its options first when wanted, then the CPU."""
    cpu: list[str | tuple[str, dict[str, str | int]]] = ["CPUExecutionProvider"]
    return [(_CUDA, cuda_provider_options(options)), *cpu] if want_cuda else cpu


class OnnxRuntime:
    """One ONNX Runtime session of a model version on one device; a pool holds several (service.runtimes.pool)."""

    format = "onnx"

    def __init__(self, artifact: Path, options: RuntimeOptions) -> None:
        want_cuda = cuda_wanted(options)
        providers = session_providers(options, want_cuda)
        if want_cuda and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        try:
            self._session = ort.InferenceSession(str(artifact), _session_options(options), providers=providers)
        except Exception as exc:  # ORT raises several unrelated classes for a bad file
            raise ModelLoadError(f"not a loadable ONNX model ({type(exc).__name__})") from exc
        got = self._session.get_providers()
        self.degraded = (want_cuda or options.device == "cuda") and got[0] != _CUDA
        if self.degraded and not options.allow_cpu_fallback:
            raise ModelLoadError(
                "configured for GPU but ONNX Runtime fell back to CPU: CUDA 13 / cuDNN 9 libraries or the driver "
                "are missing (install onnxruntime-gpu[cuda,cudnn] or set allow_cpu_fallback)"
            )
        self.device = f"cuda:{options.gpu_device_id}" if got[0] == _CUDA else "cpu"
        self.signature_name = "serving_default"
        self.inputs = [_spec(n) for n in self._session.get_inputs()]
        self.outputs = [_spec(n) for n in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        log.info("loaded %s on %s (providers %s)", artifact.parent.name, self.device, got)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the session (ORT releases the GIL while it runs)."""
        inputs = {name: _as_text(name, arr) if arr.dtype == object else arr for name, arr in inputs.items()}
        try:
            results = self._session.run(self._output_names, inputs)
        except Exception as exc:
            if _OOM.search(str(exc)):
                raise OutOfMemoryError("the model ran out of device memory for this batch") from exc
            raise InternalError("model execution failed") from exc
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Drop the session so ORT frees its memory."""
        del self._session


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    """ORT string tensors take str: it would feed a bytes element as its repr ("b'...'").

    Requests were checked for UTF-8 before queueing (TensorSpec.text); this still guards direct callers.
    """
    try:
        text = [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise BadRequestError(f"input '{name}': BYTES elements must be UTF-8 text for this ONNX model") from None
    return np.array(text, dtype=object).reshape(arr.shape)


def load(artifact: Path, options: RuntimeOptions) -> OnnxRuntime:
    """Entry point used by service.runtimes.load_runtime."""
    return OnnxRuntime(artifact, options)
