"""service.repository: the model repository on disk read into ModelSources and ModelConfigs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.repository import (
    ModelConfig,
    RepositoryError,
    artifact_path,
    detect_format,
    find_model,
    read_config,
    read_labels,
    read_model,
    scan,
    select_versions,
)
from tests.server import start_server, stop_server


def make_model(repo: Path, name: str, versions: list[str], config: dict[str, Any] | str | None = None) -> Path:
    model_dir = repo / name
    model_dir.mkdir(parents=True)
    for version in versions:
        (model_dir / version).mkdir()
        (model_dir / version / "model.onnx").write_bytes(b"onnx")
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (model_dir / "model.json").write_text(text)
    return model_dir


def test_scan_finds_each_model_directory_with_its_versions(tmp_path: Path) -> None:
    make_model(tmp_path, "mlp", ["1", "2", "10"])
    make_model(tmp_path, "enc.v2_b-1", ["3"], {"max_batch_size": 8})
    (tmp_path / "README.md").write_text("not a model")
    sources = scan(tmp_path)
    assert sorted(sources) == ["enc.v2_b-1", "mlp"]
    assert sorted(sources["mlp"].versions) == [1, 2, 10]
    assert sources["mlp"].versions[10] == tmp_path / "mlp" / "10"
    assert sources["mlp"].error is None
    assert sources["enc.v2_b-1"].config.max_batch_size == 8


def test_scan_skips_directories_whose_names_are_not_model_names(tmp_path: Path) -> None:
    for name in (".hidden", "-dash", "_under", "a" * 129, "sp ace"):
        make_model(tmp_path, name, ["1"])
    make_model(tmp_path, "a" * 128, ["1"])
    assert list(scan(tmp_path)) == ["a" * 128]


def test_scan_of_a_missing_repository_fails_without_the_full_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "models"
    with pytest.raises(RepositoryError, match=r"'models' is not a directory") as info:
        scan(missing)
    assert str(tmp_path) not in str(info.value)


def test_version_directories_are_positive_integers_without_leading_zeros(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "m", ["1", "07", "0", "2.0", "v3", "-4", "12", "9" * 20])
    (model_dir / "5").write_text("a file, not a directory")
    assert sorted(read_model(model_dir).versions) == [1, 12]


def test_a_model_without_version_directories_records_an_error(tmp_path: Path) -> None:
    source = read_model(make_model(tmp_path, "m", ["0", "01"]))
    assert source.versions == {}
    assert source.error is not None
    assert "version" in source.error


def test_model_json_is_optional_and_every_field_has_a_default(tmp_path: Path) -> None:
    config = read_config(make_model(tmp_path, "m", ["1"]))
    assert config == ModelConfig()
    assert config.version_policy == "latest"
    assert config.num_versions == 1
    assert config.max_batch_size is None


def test_a_full_model_json_is_read(tmp_path: Path) -> None:
    written = {
        "name": "m",
        "format": "onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 16,
        "max_batch_delay_ms": 5,
        "preferred_batch_sizes": [8, 4, 8],
        "max_queue_size": 10,
        "queue_timeout_ms": 100,
        "request_timeout_ms": 2000,
        "max_concurrent_batches": 2,
        "device": "cpu",
        "version_policy": "all",
        "version_labels": {"stable": 1, "canary": 2},
    }
    config = read_config(make_model(tmp_path, "m", ["1"], written))
    assert config.inputs is not None
    assert config.inputs[0].shape == [-1, 4]
    assert config.preferred_batch_sizes == [4, 8]
    assert config.version_labels == {"stable": 1, "canary": 2}
    assert config.max_concurrent_batches == 2


def test_placement_keys_are_read(tmp_path: Path) -> None:
    written = {"device": "cuda", "devices": [1, 0], "instances": 2, "gpu_memory_mb": 4096}
    config = read_config(make_model(tmp_path, "m", ["1"], written))
    assert (config.devices, config.instances, config.gpu_memory_mb) == ([1, 0], 2, 4096)
    assert (ModelConfig().devices, ModelConfig().instances, ModelConfig().gpu_memory_mb) == (None, 1, None)


def test_an_unknown_key_in_model_json_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"max_batch_sise"):
        read_config(make_model(tmp_path, "m", ["1"], {"max_batch_sise": 8}))
    with pytest.raises(RepositoryError, match=r"inputs\.0\.dtype"):
        read_config(make_model(tmp_path, "n", ["1"], {"inputs": [{"name": "x", "dtype": "FP32", "shape": [1]}]}))


def test_a_model_json_error_is_recorded_on_the_source_not_raised_by_scan(tmp_path: Path) -> None:
    make_model(tmp_path, "bad", ["1"], {"bogus": True})
    make_model(tmp_path, "good", ["1"])
    sources = scan(tmp_path)
    assert sources["good"].error is None
    assert sources["bad"].error is not None
    assert "bogus" in sources["bad"].error
    assert str(tmp_path) not in sources["bad"].error


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("{not json", "model.json"),
        ("[]", "model.json"),
        ({"format": "pytorch"}, "format"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "unknown datatype 'FLOAT'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "-1"),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "name"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"request_timeout_ms": 0}, "request_timeout_ms"),
        ({"max_concurrent_batches": 65}, "max_concurrent_batches"),
        ({"preferred_batch_sizes": [0, 4]}, "preferred_batch_sizes"),
        ({"version_policy": "newest"}, "version_policy"),
        ({"version_policy": "specific"}, "'versions'"),
        ({"num_versions": 0}, "num_versions"),
        ({"version_labels": {"bad-label": 1}}, "bad-label"),
        ({"version_labels": {"stable": 0}}, "stable"),
        ({"device": "tpu"}, "device"),
        ({"devices": []}, r"devices: .*non-empty list of distinct GPU indices"),
        ({"devices": [0, -1]}, "devices"),
        ({"devices": [1, 1]}, "devices"),
        ({"devices": "0"}, "devices"),
        ({"instances": 0}, "instances"),
        ({"instances": 17}, "instances"),
        ({"gpu_memory_mb": 0}, "gpu_memory_mb"),
        ({"device": "cpu", "devices": [0]}, "device 'cpu' takes no devices, instances or gpu_memory_mb"),
        ({"device": "cpu", "instances": 2}, "device 'cpu' takes no"),
        ({"device": "cpu", "gpu_memory_mb": 512}, "device 'cpu' takes no"),
    ],
)
def test_invalid_model_json_is_an_error_naming_the_field(
    tmp_path: Path, config: dict[str, Any] | str, problem: str
) -> None:
    with pytest.raises(RepositoryError, match=problem) as info:
        read_config(make_model(tmp_path, "m", ["1"], config))
    assert str(tmp_path) not in str(info.value)


def test_a_name_that_differs_from_the_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"'other'.*'m'"):
        read_config(make_model(tmp_path, "m", ["1"], {"name": "other"}))
    assert read_config(make_model(tmp_path, "n", ["1"], {"name": "n"})).name == "n"


def test_version_policy_latest_all_and_specific() -> None:
    available = [1, 3, 2, 10]
    assert select_versions(ModelConfig(), available) == [10]
    assert select_versions(ModelConfig(num_versions=2), available) == [10, 3]
    assert select_versions(ModelConfig(num_versions=9), available) == [10, 3, 2, 1]
    assert select_versions(ModelConfig(version_policy="all"), available) == [10, 3, 2, 1]
    assert select_versions(ModelConfig(version_policy="specific", versions=[2, 1, 7]), available) == [2, 1]
    assert select_versions(ModelConfig(version_policy="specific", versions=[7]), available) == []


def test_the_artifact_format_is_detected_from_the_version_directory(tmp_path: Path) -> None:
    onnx_dir, tf_dir, empty_dir = tmp_path / "1", tmp_path / "2", tmp_path / "3"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"")
    (tf_dir / "model.savedmodel").mkdir(parents=True)
    empty_dir.mkdir()
    assert detect_format(onnx_dir) == "onnx"
    assert detect_format(tf_dir) == "savedmodel"
    assert detect_format(empty_dir) is None
    assert artifact_path(tf_dir, "savedmodel") == tf_dir / "model.savedmodel"


def test_labels_are_read_one_per_line_when_present(tmp_path: Path) -> None:
    version_dir = make_model(tmp_path, "m", ["1"]) / "1"
    assert read_labels(version_dir) is None
    (version_dir / "labels.txt").write_text("cat\n  dog  \n\nbird\n")
    assert read_labels(version_dir) == ["cat", "dog", "bird"]


def test_find_model_matches_the_listing_and_never_joins_a_path(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_model(repo, "m", ["1"])
    make_model(tmp_path, "outside", ["1"])
    source = find_model(repo, "m")
    assert source is not None
    assert sorted(source.versions) == [1]
    for name in ("nope", "../outside", "m/1", "..", ".", "/etc", "m\x00"):
        assert find_model(repo, name) is None


def test_a_tf_serving_version_directory_is_a_savedmodel_in_place(tmp_path: Path) -> None:
    version_dir = tmp_path / "mlp" / "3"
    (version_dir / "variables").mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")
    assert detect_format(version_dir) == "savedmodel"
    assert artifact_path(version_dir, "savedmodel") == version_dir
    (version_dir / "model.savedmodel").mkdir()  # tandem's own layout wins where both exist
    assert artifact_path(version_dir, "savedmodel") == version_dir / "model.savedmodel"


def test_a_tf_serving_model_base_path_serves_unchanged(tmp_path: Path) -> None:
    import tensorflow as tf

    class Doubler(tf.Module):
        def __init__(self) -> None:
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * self.scale}

    base_path = tmp_path / "models" / "doubler"  # TF Serving: --model_base_path=.../doubler
    module = Doubler()
    tf.saved_model.save(module, str(base_path / "1"), signatures={"serving_default": module.serve})
    before = sorted(str(p.relative_to(base_path)) for p in base_path.rglob("*"))
    server = start_server(tmp_path / "models", tmp_path / "server.log", "--device", "cpu")
    try:
        with server.client() as client:
            response = client.post("/v1/models/doubler:predict", json={"instances": [[1.0, 2.0, 3.0]]})
            metadata = client.get("/v2/models/doubler").json()
    finally:
        stop_server(server)
    assert response.status_code == 200, server.output()
    assert response.json() == {"predictions": [[2.0, 4.0, 6.0]]}
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert sorted(str(p.relative_to(base_path)) for p in base_path.rglob("*")) == before
