"""`tandem import torchserve MODEL.mar`: a TorchScript or ONNX model from a TorchServe archive, verified, as a version.

The archive's handler is never run or imported, and nothing in it goes through Python's pickle: an eager checkpoint is
refused with the `tandem export torch` line that would export it from the model's code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from exporters import ExportError, step
from exporters.cli import execute
from exporters.mar import describe_handler, model_kind, module_class, read_archive
from exporters.pipeline import DEFAULT_MAX_BATCH_SIZE, Checks, export_model
from exporters.spec import InputSpec, check_names, parse_datatype, parse_dims, parse_input
from exporters.verify import Tolerance
from exporters.writer import Target, plan
from service.repository import MODEL_NAME

EPILOG = "Nothing is written unless the model loads through service.runtimes and matches the archive's model."


def build_parser() -> argparse.ArgumentParser:
    """`tandem import torchserve ARCHIVE` and its options."""
    parser = argparse.ArgumentParser(prog="tandem import", description=__doc__, epilog=EPILOG)
    sources = parser.add_subparsers(dest="source", required=True, metavar="{torchserve}")
    torchserve = sources.add_parser("torchserve", help="a TorchServe .mar archive -> ONNX", epilog=EPILOG)
    torchserve.add_argument("archive", type=Path, metavar="MODEL.mar")
    torchserve.add_argument("--name", help="model name in the repository (default: the archive's modelName)")
    torchserve.add_argument("--version", metavar="N", help="version number (default: the next free one)")
    torchserve.add_argument("--repository", type=Path, default=Path("models"), metavar="DIR", help="default: models")
    torchserve.add_argument(
        "--input", action="append", default=[], metavar="NAME:DTYPE:SHAPE[:LOW,HIGH]", help="forward's inputs, in order"
    )
    torchserve.add_argument("--output", action="append", default=[], metavar="NAME", help="output names, in order")
    torchserve.add_argument("--max-batch-size", type=int, metavar="N", help=f"default {DEFAULT_MAX_BATCH_SIZE}")
    torchserve.add_argument("--atol", type=float, default=1e-4, metavar="X", help="absolute tolerance (1e-4)")
    torchserve.add_argument("--rtol", type=float, default=1e-3, metavar="X", help="relative tolerance (1e-3)")
    return parser


def main(argv: list[str]) -> int:
    """Run one import; 0 on success, 1 with a one-line `error:` on stderr otherwise, 2 for bad usage."""
    return execute(build_parser(), run, argv)


def run(args: argparse.Namespace) -> Path:
    """Read the archive into a temp dir, pick its model, then export and verify as `tandem export` does."""
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise ExportError("--max-batch-size must be at least 1")
    if args.atol < 0 or args.rtol < 0:
        raise ExportError("--atol and --rtol must not be negative")
    if args.name is not None:
        plan(Target(args.repository, args.name, args.version))  # a bad target fails before any work
    inputs = [parse_input(text) for text in args.input]
    check_names(inputs, args.output)
    with tempfile.TemporaryDirectory(prefix="tandem-mar-") as tmp:
        with step(f"reading {args.archive.name}"):
            manifest = read_archive(args.archive, Path(tmp))
        print(f"handler: {describe_handler(manifest.handler)}; not run or imported", file=sys.stderr)
        name = args.name or _archive_name(manifest.model_name)
        target = Target(args.repository, name, args.version)
        plan(target)
        serialized = Path(tmp, *Path(manifest.serialized_file).parts)
        source = _source(args, serialized, inputs, manifest.model_file, Path(tmp), name)
        checks = Checks(args.max_batch_size, Tolerance(args.atol, args.rtol))
        return export_model(source, target, checks)


def _archive_name(model_name: str) -> str:
    if not MODEL_NAME.fullmatch(model_name) or ".." in model_name:
        raise ExportError(f"the archive's modelName '{model_name}' is not a valid model name; give one with --name")
    return model_name


def _source(
    args: argparse.Namespace, serialized: Path, inputs: list[InputSpec], model_file: str | None, tmp: Path, name: str
) -> Any:
    kind = model_kind(serialized)
    print(f"serialized model: {serialized.name} ({kind})", file=sys.stderr)
    if kind == "onnx":
        from exporters.onnx_source import OnnxFileSource

        return OnnxFileSource(serialized, inputs, args.output)
    if kind == "eager":
        raise ExportError(_eager_message(args.archive.name, serialized.name, model_file, tmp, name))
    import torch

    from exporters.torch_export import TorchSource

    with step("loading the TorchScript model"):
        try:
            module = torch.jit.load(str(serialized), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ExportError(f"torch.jit.load cannot read '{serialized.name}': {type(exc).__name__}") from None
        return TorchSource(module, inputs or _graph_inputs(module), args.output, legacy=True)


def _graph_inputs(module: Any) -> list[InputSpec]:
    """Input specs from the TorchScript graph where it records dtype and shape; otherwise say what to pass."""
    values = list(module.graph.inputs())[1:]  # the first input is the module itself
    names = [value.debugName().split(".")[0] for value in values]
    specs = []
    for name, value in zip(names, values, strict=True):
        kind = value.type()
        sizes = kind.sizes() if hasattr(kind, "sizes") else None
        dtype = kind.dtype() if hasattr(kind, "dtype") else None
        if not sizes or dtype is None:
            example = " ".join(f"--input {n}:float32:-1,<dims>" for n in names)
            raise ExportError(
                f"the TorchScript graph does not record the shape and dtype of forward's inputs {names}; "
                f"give them: {example}"
            )
        where = f"TorchScript input '{name}'"
        dims: list[int | str] = [-1, *sizes[1:]]
        specs.append(
            InputSpec(name, parse_datatype(str(dtype).removeprefix("torch."), where), parse_dims(name, dims, where))
        )
    return specs


def _eager_message(archive: str, serialized: str, model_file: str | None, tmp: Path, name: str) -> str:
    module = Path(model_file).stem if model_file else "mymodule"
    cls = (module_class(Path(tmp, model_file)) if model_file else None) or "build"
    code = f"model file '{model_file}'" if model_file else "no model file"
    return (
        f"'{serialized}' in {archive} is an eager checkpoint ({code}), not TorchScript or ONNX, and tandem never "
        f"unpickles anything from an archive; unzip it and export from the model's code: tandem export torch "
        f"--model {module}:{cls} --weights {serialized} --input NAME:DTYPE:SHAPE --name {name}"
    )
