"""PyTorch -> ONNX through the CLI, on tiny real models: what is written, that it serves, and each failure."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.repository import read_config
from tests.exporters import tiny_models
from tests.exporters.conftest import TINY, Run, assert_close, assert_nothing_written, export, load

TWO_IO = ["--input", "features:float32:-1,6", "--input", "counts:int64:-1,3:0,5", "--output", "probabilities"]
TWO_IO += ["--output", "total"]


def two_io_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "features": rng.standard_normal((batch, 6)).astype(np.float32),
        "counts": rng.integers(0, 5, (batch, 3)).astype(np.int64),
    }


def torch_outputs(model: torch.nn.Module, names: list[str], *arrays: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        result = model(*(torch.from_numpy(a) for a in arrays))
    tensors = result if isinstance(result, tuple) else (result,)
    return {name: t.numpy() for name, t in zip(names, tensors, strict=True)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def two_io(repository: Path) -> Run:
    sample = repository.parent / "sample.npz"
    arrays = two_io_inputs(5)
    np.savez(sample, features=arrays["features"], counts=arrays["counts"])
    return export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--sample", sample, "--name", "two_io",
                  "--repository", repository)  # fmt: skip


@pytest.fixture(scope="module")
def sequence(repository: Path) -> Run:
    spec = repository.parent / "sequence.json"
    inputs = [{"name": "tokens", "dtype": "int64", "shape": [-1, "seq"], "range": [0, 20]}]
    spec.write_text(json.dumps({"inputs": inputs, "outputs": ["scores"], "dims": {"seq": 7}}))
    args: list[str | Path] = ["--spec", spec, "--max-batch-size", "4", "--name", "sequence", "--repository", repository]
    return export("torch", "--model", f"{TINY}:make_sequence", *args)


def test_two_inputs_and_two_outputs_are_exported_with_their_names(two_io: Run, repository: Path) -> None:
    assert two_io.code == 0, two_io.err
    config = read_config(repository / "two_io")
    assert config.format == "onnx"
    assert config.max_batch_size == 8
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [
        ("features", "FP32", [-1, 6]),
        ("counts", "INT64", [-1, 3]),
    ]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs or []] == [
        ("probabilities", "FP32", [-1, 4]),
        ("total", "FP32", [-1, 1]),
    ]
    assert sorted(p.name for p in (repository / "two_io" / "1").iterdir()) == ["model.onnx"]


def test_the_report_gives_error_per_output_and_latency_per_batch(two_io: Run) -> None:
    lines = two_io.out.splitlines()
    assert lines[0] == "verified onnx artifact against the torch model (cpu)"
    assert any(line.split()[0] == "probabilities" for line in lines[2:4])
    assert any(line.split()[0] == "total" for line in lines[2:4])
    batches = [line.split()[0] for line in lines if line.strip()[:1].isdigit()]
    assert batches == ["1", "2", "8"]
    assert "  dynamic dims: batch (1, 2, 8)" in lines
    assert "  sample file: 5 rows match" in lines
    phases = [line for line in two_io.err.splitlines() if line.endswith("...")]
    assert phases[:3] == [
        "loading the PyTorch model...",
        "tracing with torch.export...",
        "converting with torch.onnx.export (dynamo)...",
    ]
    assert "verifying at batch 8..." in phases


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_the_two_io_artifact_serves_and_matches_the_model(two_io: Run, repository: Path, batch: int) -> None:
    runtime = load(repository, "two_io", 1, "onnx")
    arrays = two_io_inputs(batch)
    expected = torch_outputs(tiny_models.make_two_io(), ["probabilities", "total"], *arrays.values())
    assert_close(runtime.predict(arrays), expected)
    runtime.close()


def test_a_dynamic_sequence_dim_stays_dynamic(sequence: Run, repository: Path) -> None:
    assert sequence.code == 0, sequence.err
    assert "dim 'seq' (7, 14)" in sequence.out
    config = read_config(repository / "sequence")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [("tokens", "INT64", [-1, -1])]
    assert config.max_batch_size == 4
    runtime = load(repository, "sequence", 1, "onnx")
    model = tiny_models.make_sequence()
    for batch, length in [(1, 3), (2, 11), (4, 7)]:
        tokens = np.random.default_rng(length).integers(0, 20, (batch, length))
        assert_close(runtime.predict({"tokens": tokens}), torch_outputs(model, ["scores"], tokens))
    runtime.close()


def test_the_legacy_exporter_takes_the_next_version_and_keeps_hand_edits(
    two_io: Run, repository: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "two_io"
    shutil.copytree(repository / "two_io" / "1", model_dir / "1")
    (model_dir / "model.json").write_text(json.dumps({"max_batch_size": 16, "max_batch_delay_ms": 2.5}))
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--legacy-exporter", "--name", "two_io",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 0, run.err
    assert "exporting with torch.onnx.export (TorchScript, legacy)..." in run.err
    config = read_config(model_dir)
    assert (config.max_batch_size, config.max_batch_delay_ms, config.format) == (16, 2.5, "onnx")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "model.json"]
    runtime = load(tmp_path, "two_io", 2, "onnx")
    arrays = two_io_inputs(16)
    expected = torch_outputs(tiny_models.make_two_io(), ["probabilities", "total"], *arrays.values())
    assert_close(runtime.predict(arrays), expected)
    runtime.close()


def test_weights_are_loaded_from_a_state_dict(tmp_path: Path) -> None:
    model = tiny_models.make_two_io()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-3.0)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--weights", tmp_path / "weights.pt",
                 "--name", "weighted", "--repository", tmp_path)  # fmt: skip
    assert run.code == 0, run.err
    runtime = load(tmp_path, "weighted", 1, "onnx")
    arrays = two_io_inputs(2)
    assert_close(runtime.predict(arrays), torch_outputs(model.eval(), ["probabilities", "total"], *arrays.values()))
    runtime.close()


def test_weights_holding_arbitrary_objects_are_not_unpickled(tmp_path: Path) -> None:
    torch.save({"features.weight": torch.zeros(4, 6), "extra": Path("x")}, tmp_path / "weights.pt")
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--weights", tmp_path / "weights.pt",
                 "--name", "m", "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert run.error == (
        "error: weights file 'weights.pt' holds more than tensors; refusing to unpickle it (save model.state_dict())"
    )
    assert_nothing_written(tmp_path, "m")


def test_an_op_the_exporter_cannot_translate_is_named(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_eigen", "--input", "x:float32:-1,4", "--name", "m",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert run.error.startswith("error: the ONNX exporter cannot translate op 'aten.linalg_eig.default'")
    assert "--legacy-exporter" in run.error
    assert_nothing_written(tmp_path, "m")


def test_a_batch_dim_fixed_by_tracing_is_reported_with_a_fix(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_row_loop", "--input", "x:float32:-1,4", "--name", "m",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert run.error.startswith("error: the batch dim (dim 0) of input 'x' became fixed (3) in the export")
    assert "at `return torch.stack([row * 2 for row in x])` (tiny_models.py, line " in run.error
    assert "dynamic_shapes" in run.error
    assert "x.shape[0]" in run.error
    assert_nothing_written(tmp_path, "m")


def test_a_parity_failure_names_the_output_and_writes_nothing(tmp_path: Path) -> None:
    # 64 values per row: the two random dropout masks agree with probability 2**-64
    run = export("torch", "--model", f"{TINY}:make_dropout", "--input", "x:float32:-1,64", "--output", "noisy",
                 "--name", "m", "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert run.error.startswith("error: output 'noisy' at batch 1 differs from the source: max abs error")
    assert re.search(r"worst at \[0, \d+\]: exported -?[\d.e+-]+, source -?[\d.e+-]+ \(atol", run.error), run.error
    assert "(atol 0.0001, rtol 0.001)" in run.error
    assert "verified" not in run.out
    assert_nothing_written(tmp_path, "m")


def test_a_sample_file_must_hold_every_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "sample.npz", features=np.zeros((2, 6), np.float32))
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--sample", tmp_path / "sample.npz",
                 "--name", "m", "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert "sample file 'sample.npz' holds ['features'], expected arrays ['counts', 'features']" in run.error
    assert_nothing_written(tmp_path, "m")


def test_the_output_count_must_match_the_names_given(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO[:4], "--output", "only", "--name", "m",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert "the model returns 2 output(s) but 1 --output names were given" in run.error


def test_inputs_sharing_a_dynamic_dim_need_one_name_for_it(tmp_path: Path) -> None:
    common: list[str | Path] = [
        "--model",
        f"{TINY}:make_masked_bag",
        "--output",
        "probabilities",
        "--repository",
        tmp_path,
    ]
    unnamed = export("torch", *common, "--input", "ids:int64:-1,-1:0,50", "--input", "mask:float32:-1,-1:0,1",
                     "--name", "unnamed")  # fmt: skip
    assert unnamed.code == 1
    assert "the model failed on inputs ids[3, 5], mask[3, 6]" in unnamed.error
    assert "give it one name (e.g. ids:int64:-1,seq and mask:int64:-1,seq)" in unnamed.error
    assert_nothing_written(tmp_path, "unnamed")
    named = export("torch", *common, "--input", "ids:int64:-1,seq:0,50", "--input", "mask:float32:-1,seq:0,1",
                   "--dim", "seq=4", "--name", "named")  # fmt: skip
    assert named.code == 0, named.err
    assert "dim 'seq' (4, 8)" in named.out
    runtime = load(tmp_path, "named", 1, "onnx")
    rng = np.random.default_rng(0)
    for batch, length in [(1, 2), (3, 9)]:
        ids, mask = rng.integers(0, 50, (batch, length)), (rng.random((batch, length)) < 0.7).astype(np.float32)
        expected = torch_outputs(tiny_models.make_masked_bag(), ["probabilities"], ids, mask)
        assert_close(runtime.predict({"ids": ids, "mask": mask}), expected)
    runtime.close()


def test_a_sample_file_must_fit_the_declared_shapes(tmp_path: Path) -> None:
    np.savez(tmp_path / "sample.npz", features=np.zeros((2, 5), np.float32), counts=np.zeros((2, 3), np.int64))
    run = export("torch", "--model", f"{TINY}:make_two_io", *TWO_IO, "--sample", tmp_path / "sample.npz",
                 "--name", "m", "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert run.error == "error: sample 'features' is float32[2, 5], expected float32[-1, 6]"
    assert_nothing_written(tmp_path, "m")
