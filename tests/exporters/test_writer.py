"""exporters.writer: a version appears whole or not at all, and model.json keeps what people wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporters import ExportError
from exporters.writer import Config, Target, plan, write
from service.repository import read_config

SIGNATURE = {
    "name": "m",
    "format": "onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}
CONFIG = Config(SIGNATURE, defaults={"max_batch_size": 8})


def exported(tmp_path: Path, content: bytes = b"onnx") -> Path:
    """A stand-in for an exporter's temp dir holding one artifact."""
    directory = tmp_path / "export"
    directory.mkdir(exist_ok=True)
    (directory / "model.onnx").write_bytes(content)
    return directory


def test_a_new_model_appears_with_its_config_and_version(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    version_dir = write(plan(Target(repository, "m")), exported(tmp_path), CONFIG, ["cat", "dog"])
    assert version_dir == repository.resolve() / "m" / "1"
    assert sorted(p.name for p in repository.iterdir()) == ["m"]
    assert sorted(p.name for p in version_dir.iterdir()) == ["labels.txt", "model.onnx"]
    assert (version_dir / "labels.txt").read_text() == "cat\ndog\n"
    assert read_config(repository / "m").max_batch_size == 8


def test_model_json_is_written_one_tensor_per_line(tmp_path: Path) -> None:
    write(plan(Target(tmp_path, "m")), exported(tmp_path), CONFIG, None)
    text = (tmp_path / "m" / "model.json").read_text()
    assert '    {"name": "x", "datatype": "FP32", "shape": [-1, 4]}' in text.splitlines()
    assert json.loads(text) == {**SIGNATURE, "max_batch_size": 8}


def test_versions_count_up_from_the_highest_present(tmp_path: Path) -> None:
    (tmp_path / "m" / "7").mkdir(parents=True)
    (tmp_path / "m" / "notes").mkdir()
    assert plan(Target(tmp_path, "m")).version == 8


def test_a_version_taken_while_exporting_is_not_overwritten(tmp_path: Path) -> None:
    planned = plan(Target(tmp_path, "m"))
    write(plan(Target(tmp_path, "m")), exported(tmp_path, b"first"), CONFIG, None)
    with pytest.raises(ExportError, match=r"cannot move version 1 into 'm' .*Run again to take the next version"):
        write(planned, exported(tmp_path, b"second"), CONFIG, None)
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "m"]


def test_replacing_a_version_swaps_it_whole(tmp_path: Path) -> None:
    write(plan(Target(tmp_path, "m")), exported(tmp_path, b"old"), CONFIG, ["a"])
    write(plan(Target(tmp_path, "m", "1", replace=True)), exported(tmp_path, b"new"), CONFIG, None)
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["model.onnx"]
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"new"


def test_an_invalid_model_json_stops_the_write(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text('{"max_batch_sise": 4}')
    with pytest.raises(ExportError, match=r"existing model.json: max_batch_sise: .*fix or remove that model.json"):
        write(plan(Target(tmp_path, "m")), exported(tmp_path), CONFIG, None)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json"]
