"""Model names that try to leave the repository are refused, and no file outside it is ever opened."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.models import mlp

# The audit hook cannot be removed once added: it stays installed and records only while a list is set here.
_recording: list[list[str]] = []
_WATCHED = {"open", "os.listdir", "os.scandir", "shutil.rmtree", "os.remove", "os.rename"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event in _WATCHED and args and isinstance(args[0], str | bytes | os.PathLike):
        _recording[-1].append(os.path.realpath(os.fsdecode(args[0])))


_hooked = False


def _install_hook() -> None:
    global _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True


def attempts(outside: Path) -> list[tuple[str, str, dict[str, str]]]:
    """Requests in every dialect whose model name points outside the repository."""
    absolute = quote(str(outside), safe="")
    names = ["..%2Foutside", "%2E%2E", "%2E%2E%2F%2E%2E%2Foutside", absolute, "outside%00", "outside", "%00"]
    calls: list[tuple[str, str, dict[str, str]]] = []
    for name in names:
        calls += [
            ("GET", f"/v1/models/{name}", {}),
            ("GET", f"/v1/models/{name}/metadata", {}),
            ("POST", f"/v1/models/{name}:predict", {}),
            ("POST", f"/predictions/{name}", {}),
            ("POST", f"/predictions/mlp/{name}", {}),
            ("GET", f"/models/{name}", {}),
            ("PUT", f"/models/{name}?min_worker=1", {}),
            ("DELETE", f"/models/{name}", {}),
            ("POST", f"/v2/repository/models/{name}/load", {}),
            ("POST", f"/v2/repository/models/{name}/unload", {}),
            ("GET", f"/v2/models/{name}/stats", {}),
            ("POST", f"/v2/models/{name}/infer", {}),
        ]
    for url in ["../outside", "..", str(outside), f"file://{outside}", "mlp/../../outside", "outside\x00", "outside"]:
        calls.append(("POST", "/models", {"url": url, "synchronous": "true"}))
    return calls


async def _run(app: Any, calls: list[tuple[str, str, dict[str, str]]]) -> list[tuple[str, int]]:
    results = []
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for method, path, params in calls:
                response = await http.request(method, path, params=params, content=b"{}")
                results.append((f"{method} {path} {params}", response.status_code))
            index = (await http.post("/v2/repository/index")).json()
    results.append(("index", len(index)))
    assert {entry["name"] for entry in index} == {"mlp"}
    return results


@pytest.mark.parametrize("control", [True, False])
def test_traversal_attempts_are_refused_without_touching_files_outside(tmp_path: Path, control: bool) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    mlp(repo / "mlp" / "1" / "model.onnx", 1)
    mlp(outside / "1" / "model.onnx", 7)  # a servable model right beside the repository
    (tmp_path / "secret.txt").write_text("secret")
    settings = Settings(models_dir=repo, enable_model_control=control, warmup=False)
    app = create_app(settings)
    _install_hook()
    _recording.append([])
    try:
        results = asyncio.run(_run(app, attempts(outside)))
    finally:
        opened = _recording.pop()
    refused = {403} if not control else set()
    for call, status in results[:-1]:
        assert status in {400, 404, 405} | refused, call
    root, inside = str(tmp_path), str(repo)
    strays = sorted({path for path in opened if path.startswith(root) and not path.startswith(inside)})
    assert strays == []
    assert not any(path.startswith("/etc/") for path in opened)
    assert any(path.startswith(inside) for path in opened)  # the hook did see the repository being read
