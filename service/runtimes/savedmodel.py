"""TensorFlow SavedModel runtime: one signature of tf.saved_model.load, GPU memory growth on."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InternalError, ModelLoadError, OutOfMemoryError
from service.runtimes import RuntimeOptions, TensorSpec, available_cpus

log = logging.getLogger("tandem.runtime.savedmodel")
_configured = threading.Lock()
_done = False
_limits_mib: dict[int, int | None] = {}  # TensorFlow's memory limit per GPU as configured; None = memory growth
MIB = 2**20


def memory_plan(gpu_count: int, options: RuntimeOptions) -> dict[int, int | None]:
    """TensorFlow's memory limit (MiB) per GPU: the first SavedModel's budget on its GPUs, growth (None) elsewhere.

    TensorFlow fixes its GPU configuration once per process, before its first GPU use, and every SavedModel on a GPU
    shares that GPU's one allocator: later models cannot get limits of their own.
    """
    limit = options.gpu_memory_bytes // MIB
    return {i: limit if limit > 0 and i in options.model_devices else None for i in range(gpu_count)}


def configure_tensorflow(options: RuntimeOptions) -> Any:
    """Import TensorFlow once, with memory limits (or growth) and thread counts set before it initialises."""
    global _done
    # Filters TensorFlow's C++ INFO/WARNING logs (TF 2.21 prints its first few import-time lines regardless).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    with _configured:
        if not _done:
            try:
                # Placement is per model (tf.device below); hiding GPUs here would move every later model to CPU.
                gpus = tf.config.list_physical_devices("GPU")
                for index, limit in memory_plan(len(gpus), options).items():
                    if limit is None:
                        tf.config.experimental.set_memory_growth(gpus[index], True)
                    else:
                        config = tf.config.LogicalDeviceConfiguration(memory_limit=limit)
                        tf.config.set_logical_device_configuration(gpus[index], [config])
                    _limits_mib[index] = limit
                threads = options.intra_op_threads or available_cpus()
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialised in this process (e.g. by an exporter): keep its settings
                log.warning("TensorFlow was initialised before the first SavedModel load; its settings stay")
            _done = True
    return tf


def _datatype(dtype: Any) -> str:
    from service.tensors import datatype_of

    if dtype.name == "string":
        return "BYTES"
    if dtype.name == "bfloat16":
        raise ModelLoadError("bfloat16 tensors are not supported")
    return datatype_of(np.dtype(dtype.as_numpy_dtype))


def _spec(name: str, spec: Any, graph_names: dict[str, str]) -> TensorSpec:
    dims = spec.shape.as_list() if spec.shape.rank is not None else []
    shape = tuple(-1 if d is None else int(d) for d in dims)
    return TensorSpec(name, _datatype(spec.dtype), shape, graph_names.get(name, ""))


def graph_tensor_names(artifact: Path, signature: str) -> tuple[dict[str, str], dict[str, str]]:
    """Graph tensor names of one signature's inputs and outputs from its SignatureDef (TF Serving shows these)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((artifact / "saved_model.pb").read_bytes())
    except (OSError, ValueError):
        return {}, {}
    for graph in saved.meta_graphs:
        if signature in graph.signature_def:
            sig = graph.signature_def[signature]
            return {k: v.name for k, v in sig.inputs.items()}, {k: v.name for k, v in sig.outputs.items()}
    return {}, {}


def choose_signature(names: list[str], wanted: str | None) -> str:
    """The configured signature, else serving_default, else serve, else the only one."""
    if wanted is not None:
        if wanted not in names:
            raise ModelLoadError(f"signature '{wanted}' not found; the model has {sorted(names)}")
        return wanted
    for name in ("serving_default", "serve"):
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise ModelLoadError(f"no serving_default signature; set signature_name to one of {sorted(names)}")


class SavedModelRuntime:
    """A TensorFlow SavedModel served through one of its signatures."""

    format = "savedmodel"

    def __init__(self, artifact: Path, options: RuntimeOptions) -> None:
        tf = configure_tensorflow(options)
        self._tf = tf
        gpus = tf.config.list_logical_devices("GPU")
        want_gpu = options.device != "cpu"
        self.degraded = options.device == "cuda" and not gpus
        if self.degraded and not options.allow_cpu_fallback:
            raise ModelLoadError("configured for GPU but TensorFlow sees no GPU (CUDA 12 libraries or driver missing)")
        use_gpu = want_gpu and bool(gpus)
        if use_gpu and options.gpu_device_id >= len(gpus):
            raise ModelLoadError(f"TensorFlow sees no GPU cuda:{options.gpu_device_id} (it sees {len(gpus)})")
        if use_gpu and options.gpu_memory_bytes:
            _warn_unenforced(options)
        self.device = f"cuda:{options.gpu_device_id}" if use_gpu else "cpu"
        self._tf_device = f"/GPU:{options.gpu_device_id}" if use_gpu else "/CPU:0"
        try:
            with tf.device(self._tf_device):
                self._model = tf.saved_model.load(str(artifact))
        except Exception as exc:
            raise ModelLoadError(f"not a loadable SavedModel ({type(exc).__name__})") from exc
        self.signature_name = choose_signature(list(self._model.signatures.keys()), options.signature_name)
        self._fn = self._model.signatures[self.signature_name]
        args = self._fn.structured_input_signature[1]
        in_names, out_names = graph_tensor_names(artifact, self.signature_name)
        self.inputs = [_spec(name, args[name], in_names) for name in sorted(args)]
        outs = self._fn.structured_outputs
        self.outputs = [_spec(name, outs[name], out_names) for name in sorted(outs)]
        log.info("loaded %s on %s (signature %s)", artifact.parent.name, self.device, self.signature_name)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the signature."""
        tf = self._tf
        try:
            with tf.device(self._tf_device):
                result = self._fn(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.ResourceExhaustedError as exc:
            raise OutOfMemoryError("the model ran out of device memory for this batch") from exc
        except Exception as exc:
            raise InternalError("model execution failed") from exc
        return {name: value.numpy() for name, value in result.items()}

    def close(self) -> None:
        """Drop references so TensorFlow can free the model."""
        del self._fn
        del self._model


def _warn_unenforced(options: RuntimeOptions) -> None:
    configured = _limits_mib.get(options.gpu_device_id)
    if configured != options.gpu_memory_bytes // MIB:
        sized = "memory growth (no limit)" if configured is None else f"a {configured} MiB limit"
        log.warning(
            "TensorFlow set cuda:%d up with %s before this SavedModel loaded; its %d MiB budget is counted against "
            "the GPU but TensorFlow cannot enforce it on its own",
            options.gpu_device_id,
            sized,
            options.gpu_memory_bytes // MIB,
        )


def load(artifact: Path, options: RuntimeOptions) -> SavedModelRuntime:
    """Entry point used by service.runtimes.load_runtime."""
    return SavedModelRuntime(artifact, options)
