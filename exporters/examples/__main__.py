"""`python -m exporters.examples --models DIR [--force]`: build digits_mlp and digits_cnn into DIR."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from exporters import ExportError
from service.runtimes import ARTIFACT_NAMES

# name -> (module that builds it, artifact format); modules import their framework only when used
EXAMPLES = {
    "digits_mlp": ("exporters.examples.digits_mlp", "onnx"),
    "digits_cnn": ("exporters.examples.digits_cnn", "savedmodel"),
}


def present(models: Path, name: str, fmt: str) -> bool:
    """Whether version 1 of an example is already built."""
    return (models / name / "1" / ARTIFACT_NAMES[fmt]).exists()


def main(argv: list[str]) -> int:
    """Build every example not yet present (all with --force); 1 with an `error:` line on failure."""
    parser = argparse.ArgumentParser(prog="python -m exporters.examples", description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--force", action="store_true", help="rebuild examples that are already present")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    try:
        build(args.models, args.force)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"examples ready in {args.models} ({time.perf_counter() - start:.1f}s)")
    return 0


def build(models: Path, force: bool) -> dict[str, float]:
    """Train, export and verify each missing example; returns held-out accuracy per built example."""
    from exporters.examples.digits import load_split

    todo = [name for name, (_, fmt) in EXAMPLES.items() if force or not present(models, name, fmt)]
    for name in EXAMPLES:
        if name not in todo:
            print(f"{name}: already in {models}, skipped (--force rebuilds it)")
    split = load_split() if todo else None
    accuracies: dict[str, float] = {}
    for name in todo:
        module = importlib.import_module(EXAMPLES[name][0])
        # version 1 belongs to the example: a forced or half-present one is replaced, atomically
        accuracies[name] = module.build(models, split, replace=True)
    return accuracies


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
