"""More PyTorch inputs (dict, keyword, boolean masks, .pt2 programs), reduced precision, and failures that teach.

Each successful export is also served by a real server and compared with the PyTorch model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.repository import read_config
from service.runtimes import gpu_count
from tests.exporters import tiny_models
from tests.exporters.conftest import TINY, Run, assert_close, assert_nothing_written, export, infer
from tests.server import ServerProcess

DICT_INPUTS = ["--input", "features:float32:-1,4", "--input", "mask:bool:-1,4"]
KEYWORD_INPUTS = ["--input", "features:float32:-1,4", "--input", "scale:float32:-1,1"]
FP16_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}


def program_file(directory: Path) -> Path:
    """A .pt2 program of MaskedMean: one dict input (values and mask share a dynamic length), dict outputs."""
    dynamic = torch.export.Dim.DYNAMIC
    shapes = {"values": {0: dynamic, 1: dynamic}, "mask": {0: dynamic, 1: dynamic}}
    example = {"values": torch.randn(3, 5), "mask": torch.rand(3, 5) > 0.5}
    program = torch.export.export(tiny_models.MaskedMean(), (example,), dynamic_shapes=(shapes,))
    path = directory / "masked_mean.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch-families") / "models"


@pytest.fixture(scope="module")
def runs(repository: Path) -> dict[str, Run]:
    common: list[str | Path] = ["--repository", repository]
    pt2 = program_file(repository.parent)
    return {
        "dict": export("torch", "--model", f"{TINY}:make_dict_scores", *DICT_INPUTS, "--name", "dict", *common),
        "keyword": export(
            "torch", "--model", f"{TINY}:make_keyword_scores", *KEYWORD_INPUTS, "--name", "keyword", *common
        ),
        "program": export("torch", "--model", pt2, "--name", "program", *common),
        "cnn16": export(
            "torch",
            "--model",
            f"{TINY}:make_small_cnn",
            "--input",
            "image:float32:-1,1,8,8",
            "--output",
            "probabilities",
            "--precision",
            "fp16",
            "--name",
            "cnn16",
            *common,
        ),
        "cnn16io": export(
            "torch",
            "--model",
            f"{TINY}:make_small_cnn",
            "--input",
            "image:float32:-1,1,8,8",
            "--output",
            "probabilities",
            "--precision",
            "fp16",
            "--reduced-io",
            "--name",
            "cnn16io",
            *common,
        ),
    }


@pytest.fixture(scope="module")
def server(runs: dict[str, Run], repository: Path, serve_repository: Callable[[Path], ServerProcess]) -> ServerProcess:
    assert all(run.code == 0 for run in runs.values()), {n: r.err[-600:] for n, r in runs.items() if r.code}
    return serve_repository(repository)


def signature(repository: Path, name: str) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str]]]:
    config = read_config(repository / name)
    inputs = [(t.name, t.datatype, t.shape) for t in config.inputs or []]
    return inputs, [(t.name, t.datatype) for t in config.outputs or []]


def test_a_dict_input_with_a_boolean_mask_and_named_tuple_outputs(runs: dict[str, Run], repository: Path) -> None:
    assert runs["dict"].code == 0, runs["dict"].err
    assert signature(repository, "dict") == (
        [("features", "FP32", [-1, 4]), ("mask", "BOOL", [-1, 4])],
        [("scores", "FP32"), ("mask_count", "FP32")],
    )


def test_keyword_inputs_and_dict_outputs(runs: dict[str, Run], repository: Path) -> None:
    assert runs["keyword"].code == 0, runs["keyword"].err
    assert signature(repository, "keyword") == (
        [("features", "FP32", [-1, 4]), ("scale", "FP32", [-1, 1])],
        [("logits", "FP32")],
    )


def test_a_pt2_program_brings_its_own_signature(runs: dict[str, Run], repository: Path) -> None:
    assert runs["program"].code == 0, runs["program"].err
    inputs, outputs = signature(repository, "program")
    assert inputs == [("batch_values", "FP32", [-1, -1]), ("batch_mask", "BOOL", [-1, -1])]
    assert outputs == [("mean", "FP32"), ("count", "FP32")]
    assert "(5, 10)" in runs["program"].out  # the shared length was verified at a second size


def test_fp16_keeps_fp32_at_the_boundary_and_reports_where_it_ran(runs: dict[str, Run], repository: Path) -> None:
    import onnx

    run = runs["cnn16"]
    assert run.code == 0, run.err
    assert signature(repository, "cnn16") == ([("image", "FP32", [-1, 1, 8, 8])], [("probabilities", "FP32")])
    device = "cuda:0" if gpu_count() else "cpu: no CUDA provider present"
    assert run.out.splitlines()[0] == f"verified fp16 onnx artifact against the torch model ({device})"
    assert "converting the ONNX graph to fp16..." in run.err
    graph = onnx.load(str(repository / "cnn16" / "1" / "model.onnx")).graph
    assert {t.data_type for t in graph.initializer if t.dims and len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}


def test_reduced_io_takes_and_gives_fp16(runs: dict[str, Run], repository: Path, server: ServerProcess) -> None:
    assert runs["cnn16io"].code == 0, runs["cnn16io"].err
    assert signature(repository, "cnn16io") == ([("image", "FP16", [-1, 1, 8, 8])], [("probabilities", "FP16")])
    image = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float16)
    with torch.inference_mode():
        expected = tiny_models.make_small_cnn().eval()(torch.from_numpy(image.astype(np.float32))).numpy()
    with server.client() as client:
        got = infer(client, "cnn16io", {"image": image})
    assert got["probabilities"].dtype == np.float16
    assert_close({"p": got["probabilities"].astype(np.float32)}, {"p": expected}, **FP16_TOLERANCE)


def test_every_export_serves_what_pytorch_computes(server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    features, mask = rng.standard_normal((3, 4)).astype(np.float32), rng.random((3, 4)) < 0.5
    scale, image = rng.random((3, 1)).astype(np.float32), rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    values, length_mask = rng.standard_normal((3, 7)).astype(np.float32), rng.random((3, 7)) < 0.6
    with torch.inference_mode():
        scored = tiny_models.make_dict_scores()(
            {"features": torch.from_numpy(features), "mask": torch.from_numpy(mask)}
        )
        logits = tiny_models.make_keyword_scores()(features=torch.from_numpy(features), scale=torch.from_numpy(scale))
        mean = tiny_models.MaskedMean()({"values": torch.from_numpy(values), "mask": torch.from_numpy(length_mask)})
        probabilities = tiny_models.make_small_cnn().eval()(torch.from_numpy(image))
    with server.client() as client:
        dict_out = infer(client, "dict", {"features": features, "mask": mask})
        keyword_out = infer(client, "keyword", {"features": features, "scale": scale})
        program_out = infer(client, "program", {"batch_values": values, "batch_mask": length_mask})
        cnn_out = infer(client, "cnn16", {"image": image})
    assert_close(dict_out, {"scores": scored.scores.numpy(), "mask_count": scored.mask_count.numpy()})
    assert_close(keyword_out, {"logits": logits["logits"].numpy()})
    assert_close(program_out, {"mean": mean["mean"].numpy(), "count": mean["count"].numpy()})
    assert cnn_out["probabilities"].dtype == np.float32
    assert_close(cnn_out, {"probabilities": probabilities.numpy()}, **FP16_TOLERANCE)


@pytest.mark.skipif(gpu_count() > 0, reason="bf16 verifies on a GPU host")
def test_bf16_without_a_gpu_says_where_it_can_run(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_small_cnn", "--input", "image:float32:-1,1,8,8",
                 "--precision", "bf16", "--name", "m", "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert "the bf16 model does not run on this host's ONNX Runtime providers" in run.error
    assert "use --precision fp16" in run.error
    assert_nothing_written(tmp_path, "m")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "fp16", "--format", "savedmodel"], "--precision fp16 applies to ONNX exports"),
        (["--precision", "bf16", "--format", "onnx", "--reduced-io"], "--reduced-io needs --precision fp16"),
    ],
)
def test_precision_options_that_cannot_serve_are_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    run = export(
        "keras",
        "--model",
        "tests.exporters.tiny_keras:make_keras_sequential",
        *flags,
        "--name",
        "m",
        "--repository",
        tmp_path,
    )
    assert run.code == 1
    assert message in run.error


def test_an_untranslatable_op_is_named_with_its_module_path(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_nested_eigen", "--input", "x:float32:-1,4", "--name", "m",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert "cannot translate op 'aten.linalg_eig.default' in module encoder.layers.0.attn (Eigen)" in run.error
    assert_nothing_written(tmp_path, "m")
