"""Schema-driven fuzzing of a real server: every operation in /openapi.json, a bounded number of cases each.

Checks: no 5xx, every status code documented, the documented content type, and the body matches its schema.
Both valid and invalid inputs (by the schema) are generated.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import Server, start_server, stop_server
from tests.api.models import echo, fixed, mlp, pair

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20  # per operation and generation mode
MODELS = [None, "mlp", "pair", "echo", "fixed"]  # None: keep the generated name (almost always unknown)


def aim(case: Case, model: str | None) -> None:
    """Point most cases at a served model (version 1), so that bodies reach the decoders, not only a 404."""
    params = case.path_parameters
    if model is None or params is None or not isinstance(params.get("name"), str):
        return
    params["name"] = model
    if isinstance(params.get("version"), str):
        params["version"] = "1"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose models all load (a 503 would otherwise be the right answer), model control off."""
    root = tmp_path_factory.mktemp("fuzz")
    repo = root / "repo"
    mlp(repo / "mlp" / "1" / "model.onnx", 1)
    pair(repo / "pair" / "1" / "model.onnx")
    echo(repo / "echo" / "1" / "model.onnx")
    fixed(repo / "fixed" / "1" / "model.onnx")
    running = start_server(repo, root / "server.log")
    yield running
    stop_server(running)


def test_no_server_error_and_no_answer_that_contradicts_the_schema(healthy: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{healthy.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(MODELS))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: Case, model: str | None) -> None:
                aim(case, model)
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                pass  # no way to break this operation's schema (no parameters, no body): nothing negative to send
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations > 30
    assert failures == [], "\n\n".join(failures)
    with healthy.client() as client:
        counted = client.get("/metrics").text
    for dialect in ("v2", "tfserving", "torchserve"):  # fuzzed bodies reached each dialect's decoder for a model
        assert f'dialect="{dialect}",model="mlp"' in counted
