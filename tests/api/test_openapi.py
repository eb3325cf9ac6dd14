"""/openapi.json describes every dialect's routes and validates; /docs serves its page; a setting hides both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate

from service.app import create_app
from service.settings import Settings

BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}


def test_the_document_validates_and_lists_every_dialects_inference_route(client: httpx.Client) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    doc: dict[str, Any] = answer.json()
    validate(doc)
    paths = doc["paths"]
    v2 = paths["/v2/models/{name}/infer"]["post"]
    assert v2["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/V2InferRequest"}
    assert "application/octet-stream" in v2["requestBody"]["content"]
    assert any(p["name"] == "Inference-Header-Content-Length" for p in v2["parameters"])
    assert {"200", "400", "404", "503", "504"} <= v2["responses"].keys()
    assert "422" not in v2["responses"]
    assert "/v2/models/{name}/versions/{version}/infer" in paths
    predict = paths["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/TFPredictRow"} in predict["oneOf"]
    assert "/v1/models/{name}/versions/{version}:predict" in paths
    assert not any(path.startswith("/{v1}") for path in paths)
    torchserve = paths["/predictions/{name}"]["post"]
    assert torchserve["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("TorchServeError")
    schemas = doc["components"]["schemas"]
    assert {"V2InferRequest", "V2InferResponse", "V2Error", "TFPredictColumnar", "TorchServeError"} <= schemas.keys()


def test_docs_page_loads_the_spec_for_a_browser(client: httpx.Client) -> None:
    answer = client.get("/docs", headers=BROWSER)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in answer.text
    assert "swagger" in answer.text.lower()


def test_a_setting_turns_both_off(tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=tmp_path, openapi=False)).app
    paths = {getattr(route, "path", "") for route in app.routes}
    assert app.openapi_url is None
    assert app.docs_url is None
    assert not paths & {"/openapi.json", "/docs"}
