"""Turn a failed PyTorch export into one line that teaches: the op and its module, or the dim and the code."""

from __future__ import annotations

import gc
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from exporters import ExportError, quiet_converter

_MISSING_OP = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_LEGACY_OP = re.compile(r"Exporting the operator '([^']+)'")
_STATIC_DIM = re.compile(r"inferred a static shape of (\d+) for dimension inputs\['(\w+)'\]\.shape\[(\d+)\]")
# torch.export, inputs passed through the adapter's *tensors: L['tensors'][0].size()[0] ... constant (3)
_SPECIALIZED = re.compile(r"L\['tensors'\]\[(\d+)\]\.size\(\)\[(\d+)\] as dynamic but .*?constant \((\d+)\)", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FIX_DIM = (
    "keep dynamic_shapes satisfiable by avoiding x.shape[0]-dependent Python (loops over rows, reshapes to fixed sizes)"
)


class Traced(Protocol):
    """What the explanations need of a TorchSource."""

    inputs: list[Any]
    legacy: bool
    adapter: Any
    example: tuple[Any, ...]

    def dynamic_shapes(self) -> Any:
        """torch.export's dynamic_shapes for the adapter."""
        ...


def explain(exc: BaseException, source: Traced, program: Any) -> ExportError:
    """One ExportError for a converter failure: an op it cannot translate, a dim that became fixed, or a summary."""
    text = _ANSI.sub("", "\n".join(str(e) for e in _chain(exc)))
    if match := _MISSING_OP.search(text):
        return _missing_op(".".join(match.groups()), source, program)
    if match := _LEGACY_OP.search(text):
        return _missing_op(match.group(1).replace("::", "."), source, program)
    if match := _SPECIALIZED.search(text):
        index, dim, size = (int(g) for g in match.groups())
        return ExportError(_fixed_dim(source.inputs[index].name, dim, size, _fixed_at(source)))
    if match := _STATIC_DIM.search(text):
        names = [spec.name for spec in source.inputs]
        name = match.group(2) if match.group(2) in names else names[0]
        return ExportError(_fixed_dim(name, int(match.group(3)), int(match.group(1)), ""))
    exporter = "the TorchScript exporter" if source.legacy else "torch.export / torch.onnx"
    return ExportError(f"{exporter} failed: {_summary(text)}")


def _missing_op(op: str, source: Traced, program: Any) -> ExportError:
    where = module_of(op, program if program is not None else _trace(source))
    other = "the dynamo exporter" if source.legacy else "a custom_translation_table, or --legacy-exporter"
    return ExportError(
        f"the ONNX exporter cannot translate op '{op}'{where}; rewrite that part of the model, or try {other}"
    )


def module_of(op: str, program: Any) -> str:
    """' in module a.b.c (Class)' for the first use of `op` in an ExportedProgram, '' when it is not found."""
    if program is None:
        return ""
    base = op.rsplit(".", 1)[0] if op.count(".") > 1 else op
    for candidate, exact in ((program, True), (_decomposed(program), True), (program, False)):
        for node in candidate.graph.nodes if candidate is not None else []:
            name = str(node.target)
            if node.op == "call_function" and (name == op if exact else name.startswith(base)):
                return _module_path(node.meta.get("nn_module_stack") or {})
    return ""


def _module_path(stack: dict[str, tuple[str, Any]]) -> str:
    frames = [(path, str(cls)) for path, cls in stack.values()]
    path, cls = frames[-1] if frames else ("", "")
    path = path.removeprefix("model").removeprefix(".")  # the adapter holds the user's model as `model`
    cls = cls.rsplit(".", 1)[-1].strip("'>")
    return f" in module {path} ({cls})" if path else f" in the model's own forward ({cls})"


def _decomposed(program: Any) -> Any:
    try:
        with quiet_converter("torch.export"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return program.run_decompositions()
    except Exception:  # only a better location is lost
        return None


def _trace(source: Traced) -> Any:
    """An ExportedProgram for locating ops after the legacy exporter failed; None when tracing fails too."""
    import torch

    try:
        with quiet_converter("torch.export", "torch._dynamo"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(source.adapter, source.example, dynamic_shapes=source.dynamic_shapes())
    except Exception:
        return None


def _fixed_dim(name: str, dim: int, size: int, where: str) -> str:
    what = "the batch dim (dim 0)" if dim == 0 else f"dim {dim}"
    return f"{what} of input '{name}' became fixed ({size}) in the export{where}: the model's code ties it to the " + (
        f"traced size; {_FIX_DIM}"
    )


def _fixed_at(source: Traced) -> str:
    """' at `code` (file, line N)': the user's line that fixed a dynamic dim, as torch.export.draft_export finds it."""
    try:
        failures = _draft_failures(source)
    except Exception:  # draft_export is a diagnosis aid; without it the message just has no line
        return ""
    files = _interned_files()
    for failure in failures:
        stack = (failure.data.get("user_stack") or []) if isinstance(failure.data, dict) else []
        frame = stack[-1] if stack else None  # the innermost user frame: the line that fixed the dim
        if frame and frame.get("loc"):
            file = files.get(frame.get("filename"), "")
            return f" at `{frame['loc'].strip()}` ({Path(file).name + ', ' if file else ''}line {frame.get('line')})"
    return ""


def _draft_failures(source: Traced) -> list[Any]:
    """torch.export.draft_export's report, its trace log kept in a temp dir that is removed afterwards."""
    import torch
    from torch._logging._internal import DTRACE_ENV_VAR

    previous = os.environ.get(DTRACE_ENV_VAR)
    with tempfile.TemporaryDirectory(prefix="tandem-draft-") as logs, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its log handler leaves its file to the garbage collector: no ResourceWarning
        os.environ[DTRACE_ENV_VAR] = logs
        try:
            with quiet_converter("torch.export", "torch._dynamo", "torch.fx"):
                draft = torch.export.draft_export(
                    source.adapter, source.example, dynamic_shapes=source.dynamic_shapes()
                )
            return list(draft._report.failures)  # type: ignore[attr-defined]
        finally:
            if previous is None:
                os.environ.pop(DTRACE_ENV_VAR, None)
            else:
                os.environ[DTRACE_ENV_VAR] = previous
            gc.collect()


def _interned_files() -> dict[Any, str]:
    try:
        from torch._logging.structured import INTERN_TABLE

        return {index: name for name, index in INTERN_TABLE.items()}
    except (ImportError, AttributeError):
        return {}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _summary(text: str) -> str:
    """The one line that says what went wrong: torch's exception summary when it has one."""
    _, _, tail = text.partition("## Exception summary")
    lines = [line.strip() for line in (tail or text).splitlines() if line.strip()]
    line = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", lines[0] if lines else "unknown error")
    return line[:300]


def first_line(exc: object) -> str:
    """The first line of an exception's text, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
