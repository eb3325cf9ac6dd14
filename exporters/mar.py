"""Read a TorchServe .mar archive without trusting it: checked names and sizes, no pickle loaded, no handler run."""

from __future__ import annotations

import ast
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from exporters import ExportError

MANIFEST = "MAR-INF/MANIFEST.json"
# TorchServe's default handlers (ts/torch_handler/*.py), named in a manifest by module name.
BUILTIN_HANDLERS = frozenset(
    {"base_handler", "image_classifier", "image_segmenter", "object_detector", "text_classifier", "vision_handler"}
)
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may hold, against zip bombs and archives that are not models."""

    max_members: int = 10_000
    max_member_bytes: int = 8 << 30
    max_total_bytes: int = 16 << 30
    max_ratio: int = 200  # uncompressed / compressed, for members over 1 MiB
    max_manifest_bytes: int = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """What MAR-INF/MANIFEST.json says about the model."""

    model_name: str
    serialized_file: str
    handler: str
    model_file: str | None


def read_archive(path: Path, into: Path, limits: Limits | None = None) -> Manifest:
    """Check every member of the archive, then extract the manifest's serialized file (and model file) into `into`."""
    limits = limits or Limits()
    if not path.is_file():
        raise ExportError(f"archive '{path}' does not exist")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"'{path.name}' is not a zip archive; a TorchServe .mar file is one")
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        _check_members(path.name, list(members.values()), limits)
        if MANIFEST not in members:
            raise ExportError(f"'{path.name}' has no {MANIFEST}; is it a TorchServe model archive?")
        manifest = _manifest(path.name, _read(archive, members[MANIFEST], limits.max_manifest_bytes))
        for name in filter(None, (manifest.serialized_file, manifest.model_file)):
            if name not in members:
                raise ExportError(f"'{path.name}': the manifest names '{name}', which the archive does not hold")
            _extract(archive, members[name], into, limits.max_member_bytes)
    return manifest


def _check_members(archive: str, members: list[zipfile.ZipInfo], limits: Limits) -> None:
    if len(members) > limits.max_members:
        raise ExportError(f"'{archive}' holds {len(members)} files, more than {limits.max_members}")
    total = 0
    for info in members:
        if not safe_member_name(info.filename):
            raise ExportError(
                f"'{archive}' has a member named '{info.filename}' that would leave the archive; refusing it"
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ExportError(f"'{archive}' has a symbolic link '{info.filename}'; refusing it")
        if info.file_size > limits.max_member_bytes:
            raise ExportError(
                f"'{archive}': '{info.filename}' is {info.file_size} bytes, over {limits.max_member_bytes}"
            )
        if info.file_size > 1 << 20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ExportError(f"'{archive}': '{info.filename}' expands more than {limits.max_ratio}x; refusing it")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise ExportError(f"'{archive}' expands to {total} bytes, over {limits.max_total_bytes}")


def safe_member_name(name: str) -> bool:
    """A relative path that stays inside the extraction directory: no '..', no absolute path, no drive, no '\\'."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    parts = PurePosixPath(name).parts
    return bool(parts) and ":" not in parts[0] and all(part not in ("..", ".") for part in parts)


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    with archive.open(info) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ExportError(f"'{info.filename}' is larger than {limit} bytes")
    return data


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, into: Path, limit: int) -> Path:
    """Copy one member under `into`, counting bytes as they come (a zip's declared sizes can lie)."""
    target = into.joinpath(*PurePosixPath(info.filename).parts)
    if not target.resolve().is_relative_to(into.resolve()):
        raise ExportError(f"member '{info.filename}' would leave the extraction directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(info) as source, target.open("wb") as sink:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > min(limit, info.file_size):
                raise ExportError(f"member '{info.filename}' is larger than its header says; refusing the archive")
            sink.write(chunk)
    return target


def _manifest(archive: str, data: bytes) -> Manifest:
    try:
        raw: Any = json.loads(data)
        model = raw["model"]
        manifest = Manifest(
            model_name=str(model.get("modelName", "")),
            serialized_file=str(model.get("serializedFile") or ""),
            handler=str(model.get("handler") or ""),
            model_file=str(model["modelFile"]) if model.get("modelFile") else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"'{archive}': {MANIFEST} is not a TorchServe manifest (no 'model' object)") from None
    if not manifest.serialized_file:
        raise ExportError(f"'{archive}' has no serialized model (the manifest's serializedFile is empty)")
    return manifest


def describe_handler(handler: str) -> str:
    """What the archive's handler was, for people moving its pre- and post-processing into the model."""
    if not handler:
        return "none named"
    module = handler.split(":")[0]
    if module in BUILTIN_HANDLERS:
        return f"{handler} (TorchServe's built-in handler)"
    return f"{handler} (a custom handler file in the archive)"


def model_kind(path: Path) -> str:
    """'torchscript', 'onnx' or 'eager', read from the file's structure: nothing is unpickled or imported."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        code = any("/code/" in name for name in names)
        return "torchscript" if code and any(name.endswith("constants.pkl") for name in names) else "eager"
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not an ONNX protobuf: a pickle (legacy torch.save) or something else
        return "eager"
    return "onnx" if model.ir_version > 0 and len(model.graph.node) > 0 else "eager"


def module_class(model_file: Path) -> str | None:
    """The nn.Module subclass a model file defines, found by parsing it (never importing it)."""
    try:
        tree = ast.parse(model_file.read_text(errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("Module") for base in node.bases):
            return node.name
    return None


def copy_file(source: Path, target: Path) -> Path:
    """Copy an extracted file into the export directory."""
    shutil.copyfile(source, target)
    return target
