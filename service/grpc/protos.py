"""The message and service definitions, as the official client packages ship them, in one private pool.

tritonclient[grpc] ships the KServe V2 protos and tensorflow-serving-api the TF Serving ones. Importing the
latter's modules would import TensorFlow (its generated code imports `tensorflow.core.framework.*`, whose
package init loads all of TensorFlow: seconds of CPU and hundreds of MB), which the server only needs for
SavedModels. So the serialized file descriptors are read out of the shipped generated modules with `ast`
(nothing is executed), following each module's imports of other `_pb2` modules, and added to a pool of
our own. Message classes come from that pool; server reflection reads the same pool.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

KSERVE = "inference.GRPCInferenceService"
PREDICTION = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
HEALTH = "grpc.health.v1.Health"
# The generated modules whose files (and their imports) make up the pool.
ROOTS = (
    "tritonclient.grpc.service_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "grpc_health.v1.health_pb2",
    "grpc_reflection.v1alpha.reflection_pb2",
)


class ProtoError(RuntimeError):
    """A shipped generated module is missing or not in the expected form (a broken install)."""


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """Every file the gRPC services need, loaded once."""
    built = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for module in ROOTS:
        _add(built, module, added)
    return built


def message(full_name: str) -> Any:
    """The message class for a fully qualified name, e.g. "inference.ModelInferRequest"."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))  # type: ignore[no-untyped-call]


def enum_values(full_name: str) -> dict[str, int]:
    """An enum's value numbers by name, e.g. enum_values("tensorflow.DataType")["DT_FLOAT"] == 1."""
    found = pool().FindEnumTypeByName(full_name)  # type: ignore[no-untyped-call]
    return {value.name: value.number for value in found.values}


def _add(target: descriptor_pool.DescriptorPool, module: str, added: set[str]) -> None:
    if module in added:
        return
    added.add(module)
    serialized, imports = _read(module)
    for dependency in imports:
        _add(target, dependency, added)
    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
    try:
        target.FindFileByName(name)  # type: ignore[no-untyped-call]
    except KeyError:
        target.AddSerializedFile(serialized)  # type: ignore[no-untyped-call]


def _read(module: str) -> tuple[bytes, list[str]]:
    """The serialized FileDescriptorProto a generated module registers, and the `_pb2` modules it imports."""
    tree = ast.parse(_locate(module).read_bytes())
    serialized: object = None
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "AddSerializedFile" and node.args and isinstance(node.args[0], ast.Constant):
                serialized = node.args[0].value
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.endswith("_pb2")]
    if not isinstance(serialized, bytes):
        raise ProtoError(f"{module} does not register a serialized file descriptor")
    return serialized, imports


def _locate(module: str) -> Path:
    """The source file of a module, found without importing its package (find_spec of a top-level name)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base).joinpath(*rest[:-1], f"{rest[-1]}.py")
        if path.is_file():
            return path
    raise ProtoError(f"cannot find {module}: is the package that ships it installed?")
