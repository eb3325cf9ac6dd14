"""The README's TF Serving and TorchServe curl commands against the bundled examples, served for real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.conftest import ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.slow
# sklearn's digits[0], a zero: the sample in the README.
ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
ZERO += [0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m exporters.examples` into a fresh repository, then a server over it."""
    pytest.importorskip("exporters.examples")
    root = tmp_path_factory.mktemp("examples")
    command = [sys.executable, "-m", "exporters.examples", "--models", str(root / "models")]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    server = start_server(root / "models", root / "server.log")
    yield server
    stop_server(server)


def test_tf_serving_curl_from_the_readme(examples: Server) -> None:
    with examples.client() as http:
        response = http.post("/v1/models/digits_mlp:predict", json={"instances": [ZERO]})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"
    [probabilities] = response.json()["predictions"]
    assert len(probabilities) == 10
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert int(np.argmax(probabilities)) == 0


def test_torchserve_curl_from_the_readme(examples: Server) -> None:
    with examples.client() as http:
        response = http.post("/predictions/digits_mlp", json=ZERO)
    assert response.status_code == 200, response.text
    probabilities = response.json()
    assert len(probabilities) == 10
    assert int(np.argmax(probabilities)) == 0


def test_the_savedmodel_example_in_both_dialects(examples: Server) -> None:
    image = np.asarray(ZERO, dtype=np.float32).reshape(8, 8, 1).tolist()
    with examples.client() as http:
        described = http.get("/v1/models/digits_cnn/metadata")
        tfs = http.post("/v1/models/digits_cnn:predict", json={"inputs": {"image": [image]}})
        ts = http.post("/predictions/digits_cnn", json=image)
    assert described.status_code == 200, described.text
    signature = described.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["tensor_shape"]["dim"][1:] == [{"size": "8", "name": ""}] * 2 + [
        {"size": "1", "name": ""}
    ]
    assert tfs.status_code == 200, tfs.text
    assert int(np.argmax(tfs.json()["outputs"][0])) == 0
    assert ts.status_code == 200, ts.text
    assert int(np.argmax(ts.json())) == 0
