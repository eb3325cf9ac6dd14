"""The docs tell the truth: every setting and metric is documented, every linked page exists."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TANDEM_{name.upper()}`" not in text]
    assert missing == []


def test_configuration_reference_names_no_setting_that_does_not_exist() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`TANDEM_([A-Z0-9_]+)`", text))
    assert documented <= {name.upper() for name in Settings.model_fields}


def test_every_exported_metric_is_in_the_metrics_table() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    text = (ROOT / "docs" / "metrics.md").read_text()
    # prometheus_client names a counter's family without its _total suffix
    names = {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert missing == []


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links, "README has no links"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []


def test_readme_quick_start_has_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make serve" in quick_start
    assert "make test" in quick_start
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M)
    assert re.search(r"^test:", makefile, re.M)
