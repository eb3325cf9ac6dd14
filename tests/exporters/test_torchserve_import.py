"""`tandem import torchserve`: archives built here as TorchServe's archiver writes them (MAR-INF/MANIFEST.json)."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.mar import Limits, read_archive, safe_member_name
from service.cli import main as tandem
from service.repository import read_config
from tests.exporters import tiny_models
from tests.exporters.conftest import Run, assert_close, assert_nothing_written, infer
from tests.server import ServerProcess

TWO_IO = ["--input", "features:float32:-1,6", "--input", "counts:int64:-1,3:0,5"]


def tandem_import(*argv: str | Path) -> Run:
    """`tandem import ...` through the console script's entry point, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tandem(["import", *(str(arg) for arg in argv)])
    return Run(code, out.getvalue(), err.getvalue())


def write_mar(path: Path, files: dict[str, bytes], handler: str = "image_classifier", **model: str) -> Path:
    """A .mar as torch-model-archiver writes it: a zip with MAR-INF/MANIFEST.json beside the model's files."""
    manifest = {
        "createdOn": "30/11/2026 12:00:00",
        "runtime": "python",
        "model": {
            "modelName": "two_io",
            "serializedFile": "model.pt",
            "handler": handler,
            "modelVersion": "1.0",
            **model,
        },
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def torchscript_bytes(directory: Path) -> bytes:
    model = tiny_models.make_two_io().eval()
    traced = torch.jit.trace(model, (torch.randn(2, 6), torch.randint(0, 5, (2, 3))))
    torch.jit.save(traced, str(directory / "traced.pt"))
    return (directory / "traced.pt").read_bytes()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchserve") / "models"


@pytest.fixture(scope="module")
def imported(repository: Path) -> Run:
    archive = write_mar(repository.parent / "two_io.mar", {"model.pt": torchscript_bytes(repository.parent)})
    return tandem_import("torchserve", archive, *TWO_IO, "--output", "probabilities", "--output", "total",
                         "--repository", repository)  # fmt: skip


def test_a_torchscript_archive_becomes_a_verified_onnx_version(imported: Run, repository: Path) -> None:
    assert imported.code == 0, imported.err
    assert "handler: image_classifier (TorchServe's built-in handler); not run or imported" in imported.err
    assert "serialized model: model.pt (torchscript)" in imported.err
    assert imported.out.splitlines()[0] == "verified onnx artifact against the torch model (cpu)"
    config = read_config(repository / "two_io")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [
        ("features", "FP32", [-1, 6]),
        ("counts", "INT64", [-1, 3]),
    ]
    assert [t.name for t in config.outputs or []] == ["probabilities", "total"]


def test_the_imported_version_serves_what_the_model_computes(
    imported: Run, repository: Path, serve_repository: Callable[[Path], ServerProcess]
) -> None:
    assert imported.code == 0, imported.err
    server = serve_repository(repository)
    rng = np.random.default_rng(4)
    features, counts = rng.standard_normal((3, 6)).astype(np.float32), rng.integers(0, 5, (3, 3))
    with torch.inference_mode():
        probabilities, total = tiny_models.make_two_io().eval()(torch.from_numpy(features), torch.from_numpy(counts))
    with server.client() as client:
        got = infer(client, "two_io", {"features": features, "counts": counts})
    assert_close(got, {"probabilities": probabilities.numpy(), "total": total.numpy()})


def test_without_inputs_the_import_says_which_to_give(tmp_path: Path) -> None:
    archive = write_mar(tmp_path / "two_io.mar", {"model.pt": torchscript_bytes(tmp_path)})
    run = tandem_import("torchserve", archive, "--repository", tmp_path / "models")
    assert run.code == 1
    assert "does not record the shape and dtype of forward's inputs ['features', 'counts']" in run.error
    assert "--input features:float32:-1,<dims> --input counts:float32:-1,<dims>" in run.error
    assert_nothing_written(tmp_path / "models", "two_io")


def test_an_eager_checkpoint_is_refused_with_the_export_line(tmp_path: Path) -> None:
    torch.save(tiny_models.make_two_io().state_dict(), tmp_path / "weights.pt")
    model_file = b"import torch\nfrom torch import nn\n\n\nclass TwoInOut(nn.Module):\n    pass\n"
    files = {
        "model.pt": (tmp_path / "weights.pt").read_bytes(),
        "model.py": model_file,
        "my_handler.py": b"raise SystemExit",
    }
    archive = write_mar(tmp_path / "eager.mar", files, handler="my_handler.py", modelFile="model.py")
    run = tandem_import("torchserve", archive, *TWO_IO, "--name", "eager", "--repository", tmp_path / "models")
    assert run.code == 1
    assert "handler: my_handler.py (a custom handler file in the archive); not run or imported" in run.err
    assert run.error == (
        "error: 'model.pt' in eager.mar is an eager checkpoint (model file 'model.py'), not TorchScript or ONNX, "
        "and tandem never unpickles anything from an archive; unzip it and export from the model's code: "
        "tandem export torch --model model:TwoInOut --weights model.pt --input NAME:DTYPE:SHAPE --name eager"
    )
    assert_nothing_written(tmp_path / "models", "eager")


@pytest.mark.parametrize("member", ["../escape.txt", "a/../../escape.txt", "/etc/escape", "C:/escape", "a\\..\\b"])
def test_an_archive_with_a_member_outside_it_is_refused(tmp_path: Path, member: str) -> None:
    archive = write_mar(tmp_path / "evil.mar", {"model.pt": b"x", member: b"x"})
    run = tandem_import("torchserve", archive, "--repository", tmp_path / "models")
    assert run.code == 1
    assert f"has a member named '{member}' that would leave the archive; refusing it" in run.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.mar"]


def test_member_names_and_sizes_are_checked_before_anything_is_extracted(tmp_path: Path) -> None:
    assert safe_member_name("model/weights.pt")
    assert not safe_member_name("model/../../weights.pt")
    archive = write_mar(tmp_path / "big.mar", {"model.pt": b"\0" * 4096})
    with pytest.raises(Exception, match=r"'model.pt' is 4096 bytes, over 1000"):
        read_archive(archive, tmp_path / "out", Limits(max_member_bytes=1000))
    assert not (tmp_path / "out").exists()


def test_an_onnx_archive_is_verified_and_copied(tmp_path: Path) -> None:
    from tests.api.models import mlp

    mlp(tmp_path / "mlp.onnx", 2)
    archive = write_mar(
        tmp_path / "mlp.mar", {"mlp.onnx": (tmp_path / "mlp.onnx").read_bytes()}, serializedFile="mlp.onnx"
    )
    run = tandem_import("torchserve", archive, "--name", "mlp", "--repository", tmp_path / "models")
    assert run.code == 0, run.err
    assert "serialized model: mlp.onnx (onnx)" in run.err
    assert (tmp_path / "models" / "mlp" / "1" / "model.onnx").read_bytes() == (tmp_path / "mlp.onnx").read_bytes()
