"""`tandem export` / `python -m exporters`: export a PyTorch or Keras model into the model repository."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporters import ExportError, step
from exporters.pipeline import DEFAULT_MAX_BATCH_SIZE, Checks, export_model
from exporters.precision import DEFAULT_TOLERANCES, PRECISIONS, check_precision
from exporters.spec import InputSpec, Source, SpecFile, check_names, parse_dim_size, parse_input, read_spec_file
from exporters.verify import Tolerance, read_sample
from exporters.writer import Target, plan

EPILOG = "Nothing is written unless the exported artifact loads through service.runtimes and matches the model."


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per framework."""
    parser = argparse.ArgumentParser(prog="tandem export", description=__doc__, epilog=EPILOG)
    frameworks = parser.add_subparsers(dest="framework", required=True, metavar="{torch,keras}")
    torch = frameworks.add_parser("torch", help="PyTorch nn.Module -> ONNX", epilog=EPILOG)
    torch.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CALLABLE|FILE.pt2",
        help="factory returning an nn.Module, or an ExportedProgram saved with torch.export.save",
    )
    torch.add_argument(
        "--weights", type=Path, metavar="FILE", help="state dict file (torch.save), loaded with weights_only=True"
    )
    torch.add_argument("--legacy-exporter", action="store_true", help="use the TorchScript exporter, not dynamo")
    keras = frameworks.add_parser("keras", help="Keras model -> SavedModel or ONNX", epilog=EPILOG)
    keras.add_argument("--model", required=True, metavar="FILE.keras|MODULE:CALLABLE", help="loaded with safe_mode")
    keras.add_argument("--format", choices=["savedmodel", "onnx"], default="savedmodel", help="default: savedmodel")
    for sub in (torch, keras):
        _add_common(sub)
    return parser


def _add_common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--name", required=True, help="model name in the repository")
    sub.add_argument("--version", metavar="N", help="version number (default: one more than the highest present)")
    sub.add_argument(
        "--repository", type=Path, default=Path("models"), metavar="DIR", help="model repository (default: models)"
    )
    sub.add_argument("--labels", type=Path, metavar="FILE", help="one class label per line, copied as labels.txt")
    signature = sub.add_argument_group("signature")
    signature.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DTYPE:SHAPE[:LOW,HIGH]",
        help="e.g. pixels:float32:-1,64:0,16 (Keras: optional, replaces the model's own inputs in order)",
    )
    signature.add_argument("--output", action="append", default=[], metavar="NAME", help="output names, in order")
    signature.add_argument("--spec", type=Path, metavar="FILE", help="JSON file with inputs, outputs and dims")
    signature.add_argument(
        "--dim", action="append", default=[], metavar="NAME=SIZE", help="trace size of a dynamic dim (or INPUT.INDEX)"
    )
    checks = sub.add_argument_group("verification")
    checks.add_argument(
        "--max-batch-size",
        type=int,
        metavar="N",
        help=f"largest batch verified and served (default {DEFAULT_MAX_BATCH_SIZE})",
    )
    checks.add_argument(
        "--atol", type=float, metavar="X", help="absolute tolerance (default 1e-4; fp16 1e-2; bf16 5e-2)"
    )
    checks.add_argument(
        "--rtol", type=float, metavar="X", help="relative tolerance (default 1e-3; fp16 1e-2; bf16 5e-2)"
    )
    checks.add_argument("--sample", type=Path, metavar="FILE.npz", help="real inputs, one array per input name")
    precision = sub.add_argument_group("precision (ONNX)")
    precision.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="float precision inside the graph (default fp32)"
    )
    precision.add_argument(
        "--reduced-io", action="store_true", help="FP16 inputs and outputs too (default: FP32 at the boundary)"
    )


def main(argv: list[str]) -> int:
    """Run one export; 0 on success, 1 with a one-line `error:` on stderr otherwise, 2 for bad usage."""
    return execute(build_parser(), run, argv)


def execute(parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], object], argv: list[str]) -> int:
    """Parse, then run one command: 0 on success, 1 with a one-line `error:` on stderr, 2 for bad usage."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None) * 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up logging drowns the report
    try:
        work(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace) -> Path:
    """Check the cheap things first (target, signature, files), then load, export, verify and write."""
    target = Target(args.repository, args.name, args.version)
    plan(target)  # again when writing; checked now so that a bad target fails before any slow import
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise ExportError("--max-batch-size must be at least 1")
    atol, rtol = DEFAULT_TOLERANCES[args.precision]
    tolerance = Tolerance(atol if args.atol is None else args.atol, rtol if args.rtol is None else args.rtol)
    if tolerance.atol < 0 or tolerance.rtol < 0:
        raise ExportError("--atol and --rtol must not be negative")
    check_precision(args.precision, getattr(args, "format", "onnx"), args.reduced_io)
    spec = _signature(args)
    labels = _labels(args.labels)
    source = _source(args, spec)
    sample = read_sample(args.sample, source.inputs) if args.sample else None
    checks = Checks(args.max_batch_size, tolerance, sample, spec.dims, args.precision, args.reduced_io)
    return export_model(source, target, checks, labels)


def _signature(args: argparse.Namespace) -> SpecFile:
    from_file = read_spec_file(args.spec) if args.spec else SpecFile([], [], {})
    inputs = [parse_input(text) for text in args.input] or from_file.inputs
    outputs = list(args.output) or from_file.outputs
    dims = from_file.dims | dict(parse_dim_size(text) for text in args.dim)
    if args.framework == "torch" and not inputs and not args.model.endswith(".pt2"):
        raise ExportError("describe the model's inputs with --input NAME:DTYPE:SHAPE or --spec FILE")
    check_names(inputs, outputs)
    return SpecFile(inputs, outputs, dims)


def _labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read labels file '{path}': {exc}") from None


def _source(args: argparse.Namespace, spec: SpecFile) -> Source:
    # Framework imports are slow (seconds) and heavy, so each happens only for its own subcommand.
    if args.framework == "torch":
        with step("loading the PyTorch model"):
            from exporters.torch_export import TorchSource, load_torch_model

            inputs: list[InputSpec] = spec.inputs
            if args.model.endswith(".pt2"):
                model, inputs = _program(args, spec)
            else:
                model = load_torch_model(args.model, args.weights)
            return TorchSource(model, inputs, spec.outputs, legacy=args.legacy_exporter, dim_sizes=spec.dims)
    with step("loading the Keras model"):
        from exporters.keras_export import KerasSource, load_keras_model

        keras_model = load_keras_model(args.model)
        return KerasSource(keras_model, spec.inputs, spec.outputs, args.format)


def _program(args: argparse.Namespace, spec: SpecFile) -> tuple[Any, list[InputSpec]]:
    from exporters.torch_program import ProgramModule, load_program, program_inputs

    if args.weights is not None:
        raise ExportError("--weights does not apply to a .pt2 program: its weights are inside it")
    program = load_program(Path(args.model))
    return ProgramModule(program), program_inputs(program, spec.inputs)
