"""The benchmark's request bodies are what users send: 784 FP32 values per sample, in each dialect's shape."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.bodies import BINARY_HEADER, pixels, tfs_json, v2_binary, v2_json
from benchmarks.models import CNN, MLP


def test_v2_json_holds_one_784_value_sample_of_about_7_kb() -> None:
    body = v2_json(MLP)
    assert 6_500 < len(body.content) < 8_000
    (tensor,) = json.loads(body.content)["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("pixels", [1, 784], "FP32")
    np.testing.assert_allclose(tensor["data"], pixels(MLP, 1).ravel(), rtol=0, atol=1e-6)
    assert body.path == "/v2/models/mnist_mlp/infer"
    assert body.headers == {"Content-Type": "application/json"}


def test_v2_json_for_the_cnn_carries_the_image_shape() -> None:
    (tensor,) = json.loads(v2_json(CNN).content)["inputs"]
    assert (tensor["name"], tensor["shape"], len(tensor["data"])) == ("image", [1, 1, 28, 28], 784)


def test_tfs_json_nests_each_instance_as_the_row_shape() -> None:
    assert np.asarray(json.loads(tfs_json(MLP).content)["instances"]).shape == (1, 784)
    body = tfs_json(CNN)
    assert np.asarray(json.loads(body.content)["instances"]).shape == (1, 1, 28, 28)
    assert body.path == "/v1/models/mnist_cnn:predict"


def test_v2_binary_frames_a_json_header_then_64_rows_of_little_endian_fp32() -> None:
    body = v2_binary(MLP)
    split = int(body.headers[BINARY_HEADER])
    header = json.loads(body.content[:split])
    (tensor,) = header["inputs"]
    assert tensor == {
        "name": "pixels",
        "shape": [64, 784],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 64 * 784 * 4},
    }
    assert header["parameters"] == {"binary_data_output": True}
    rows = np.frombuffer(body.content[split:], dtype="<f4").reshape(64, 784)
    np.testing.assert_array_equal(rows, pixels(MLP, 64))
    assert (body.rows, body.headers["Content-Type"]) == (64, "application/octet-stream")


def test_pixels_are_deterministic_values_in_the_unit_interval() -> None:
    first = pixels(CNN, 2)
    assert first.shape == (2, 1, 28, 28)
    assert first.dtype == np.float32
    assert first.min() >= 0
    assert first.max() < 1
    np.testing.assert_array_equal(first, pixels(CNN, 2))
