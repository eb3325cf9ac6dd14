"""The reference a user would write first: FastAPI + ONNX Runtime, json -> np.asarray -> session.run, no batching."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request

sessions: dict[str, ort.InferenceSession] = {}
app = FastAPI()


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    """Ready as soon as it listens: the sessions load before."""
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, Any]:
    """KServe V2 JSON, one input, one output."""
    tensor = (await request.json())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (y,) = sessions[name].run(None, {tensor["name"]: x})
    output = {"name": "logits", "shape": list(y.shape), "datatype": "FP32", "data": y.ravel().tolist()}
    return {"model_name": name, "outputs": [output]}


@app.post("/v1/models/{name}:predict")
async def predict(name: str, request: Request) -> dict[str, Any]:
    """TF Serving row format."""
    x = np.asarray((await request.json())["instances"], dtype=np.float32)
    (y,) = sessions[name].run(None, {sessions[name].get_inputs()[0].name: x})
    return {"predictions": y.tolist()}


def main(models: Path, port: int) -> None:
    """Load every `<name>/1/model.onnx` under models on one intra-op thread, then serve on 127.0.0.1."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for path in models.glob("*/1/model.onnx"):
        sessions[path.parent.parent.name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
