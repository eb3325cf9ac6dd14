"""An ExportedProgram saved with torch.export.save (.pt2) as an export source: its signature comes with it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from exporters import ExportError, quiet_converter
from exporters.spec import IDENTIFIER, InputSpec, parse_datatype, parse_dims
from exporters.torch_explain import first_line


def load_program(path: Path) -> Any:
    """torch.export.load: the program's graph and weights (a .pt2 file is code and data: load only trusted files)."""
    if not path.is_file():
        raise ExportError(f"--model '{path}': no such .pt2 file")
    try:
        with quiet_converter("torch.export"):
            return torch.export.load(str(path))
    except Exception as exc:
        raise ExportError(f"cannot load '{path.name}' with torch.export.load: {first_line(exc)}") from None


class ProgramModule(torch.nn.Module):
    """The program as a module taking its flat user inputs in order (they may have been a dict or kwargs)."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.module = program.module()
        self.in_spec = program.call_spec.in_spec

    def train(self, mode: bool = True) -> ProgramModule:
        """A program is always in inference mode (and refuses train()/eval() itself)."""
        return self

    def forward(self, *tensors: torch.Tensor) -> Any:
        """Rebuild the program's (args, kwargs) structure from the flat tensors and call it."""
        args, kwargs = torch.utils._pytree.tree_unflatten(list(tensors), self.in_spec)
        return self.module(*args, **kwargs)


def program_inputs(program: Any, given: Sequence[InputSpec]) -> list[InputSpec]:
    """Input specs from the program's placeholders: symbolic dims are dynamic, a symbol shared by inputs keeps one name.

    `given` (from --input) replaces them in order, to rename them or give value ranges.
    """
    values = _user_input_values(program)
    if given:
        if len(given) != len(values):
            raise ExportError(f"the program takes {len(values)} input(s) but {len(given)} --input were given")
        return list(given)
    counts: dict[str, int] = {}
    for _, value in values:
        for dim in value.shape:
            if isinstance(dim, torch.SymInt):
                counts[str(dim)] = counts.get(str(dim), 0) + 1
    return [_spec(name, value, counts) for name, value in values]


def _user_input_values(program: Any) -> list[tuple[str, Any]]:
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    values = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"program input '{name}' is not a tensor; only tensor inputs can be served")
        values.append((name, value))
    return values


def _spec(name: str, value: Any, counts: dict[str, int]) -> InputSpec:
    where = f"program input '{name}'"
    if not IDENTIFIER.fullmatch(name):
        raise ExportError(f"{where}: name is not an identifier; rename it with --input")
    if not value.shape or not isinstance(value.shape[0], torch.SymInt):
        raise ExportError(
            f"{where}: dim 0 is fixed ({list(value.shape)}); export the program with "
            "dynamic_shapes={0: torch.export.Dim.DYNAMIC} for each input so that the batch stays dynamic"
        )
    dims: list[int | str] = [-1]
    for dim in value.shape[1:]:
        if isinstance(dim, torch.SymInt):
            dims.append(str(dim) if counts[str(dim)] > 1 else -1)
        else:
            dims.append(int(dim))
    dtype = str(value.dtype).removeprefix("torch.")
    return InputSpec(name, parse_datatype(dtype, where), parse_dims(name, dims, where))
