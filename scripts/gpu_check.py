"""Report whether ONNX Runtime and TensorFlow can use a GPU here; run it inside the image on a GPU host.

    docker run --rm -i --gpus all --entrypoint python tandem:0.1.0 - < scripts/gpu_check.py

Exit status: 0 when every installed framework runs on the GPU, or when the host has no NVIDIA GPU at
all ("no GPU", printed plainly); 1 when a GPU is present but a framework falls back to the CPU, or
when --require-gpu is given and no GPU works.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CUDA_PROVIDER = "CUDAExecutionProvider"
# tiny_onnx_model()'s bytes, for the server image, which has onnxruntime but not the onnx package
# (tests/deploy/test_gpu_check.py keeps the two equal).
TINY_MODEL_HEX = (
    "08083a470a0e0a01780a0178120179220341646412096770755f636865636b5a140a0178120f0a0d080112090a0312014e"
    "0a02080462140a0179120f0a0d080112090a0312014e0a02080442040a001011"
)


@dataclass
class Check:
    """One framework's verdict: whether it is installed, whether it reaches a GPU, and what it said."""

    name: str
    installed: bool
    uses_gpu: bool
    lines: list[str]


def nvml_gpus() -> list[str]:
    """Names of the GPUs the NVIDIA driver reports, or an empty list when there is no driver or device."""
    if importlib.util.find_spec("pynvml") is None:
        return ["(unknown: nvidia-ml-py not installed)"] if Path("/dev/nvidiactl").exists() else []
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver_text = driver.decode() if isinstance(driver, bytes) else str(driver)
        return [f"{n} (driver {driver_text}, supports CUDA {cuda // 1000}.{cuda % 1000 // 10})" for n in names]
    finally:
        pynvml.nvmlShutdown()


def tiny_onnx_model(directory: Path) -> Path:
    """Write a one-node Add model (x + x over float32 [N, 4]) and return its path."""
    path = directory / "model.onnx"
    if importlib.util.find_spec("onnx") is None:
        path.write_bytes(bytes.fromhex(TINY_MODEL_HEX))
        return path
    from onnx import TensorProto, helper, save_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "gpu_check", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    save_model(model, str(path))
    return path


def check_onnxruntime(gpu_present: bool) -> Check:
    """Open a session on a tiny model with CUDA first and report which provider it actually got."""
    if importlib.util.find_spec("onnxruntime") is None:
        return Check("onnxruntime", False, False, ["not installed"])
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # the CUDA provider's load errors show as the providers it got
    available = ort.get_available_providers()
    lines = [f"version {ort.__version__}, device {ort.get_device()}", f"available providers: {available}"]
    if gpu_present and CUDA_PROVIDER in available and hasattr(ort, "preload_dlls"):
        # Same as the server: load the CUDA and cuDNN libraries from the nvidia-* wheels.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            ort.preload_dlls()
        lines += [f"preload_dlls: {line}" for line in captured.getvalue().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(
            str(tiny_onnx_model(Path(tmp))), providers=[CUDA_PROVIDER, "CPUExecutionProvider"]
        )
        got = session.get_providers()
        (y,) = session.run(None, {"x": np.ones((2, 4), dtype=np.float32)})
    ok = bool(np.all(y == 2.0))
    lines += [f"session providers: {got}", f"tiny model output {'correct' if ok else 'WRONG'}"]
    return Check("onnxruntime", True, ok and got[:1] == [CUDA_PROVIDER], lines)


def check_tensorflow() -> Check:
    """List TensorFlow's GPUs and the CUDA and cuDNN versions it was built for."""
    if importlib.util.find_spec("tensorflow") is None:
        return Check("tensorflow", False, False, ["not installed"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    cuda, cudnn = build.get("cuda_version", "-"), build.get("cudnn_version", "-")
    lines = [
        f"version {tf.__version__}, built for CUDA {cuda} cuDNN {cudnn}",
        f"GPUs: {[gpu.name for gpu in gpus] or 'none'}",
    ]
    return Check("tensorflow", True, bool(gpus), lines)


def main(argv: list[str] | None = None) -> int:
    """Print each framework's GPU status and return the exit status described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 when no GPU is usable")
    args = parser.parse_args(argv)

    gpus = nvml_gpus()
    print(f"NVIDIA GPUs: {gpus or 'none'}")
    checks = [check_onnxruntime(bool(gpus)), check_tensorflow()]
    for check in checks:
        print(f"{check.name}:")
        for line in check.lines:
            print(f"  {line}")
    installed = [c for c in checks if c.installed]
    failed = [c.name for c in installed if not c.uses_gpu]
    if not installed:
        print("FAIL: neither onnxruntime nor tensorflow is installed.")
        return 1
    if not gpus:
        print("no GPU: no NVIDIA driver or device visible; the server will run on the CPU.")
        return 1 if args.require_gpu else 0
    if failed:
        names = ", ".join(failed)
        print(f"FAIL: a GPU is present but {names} fell back to the CPU (see Troubleshooting in docs/deployment.md).")
        return 1
    print(f"OK: {', '.join(c.name for c in installed)} run on the GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
