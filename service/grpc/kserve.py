"""KServe V2 / Open Inference Protocol over gRPC (inference.GRPCInferenceService), as tritonclient.grpc calls it."""

from __future__ import annotations

import hmac
import importlib.metadata
from typing import Any

import grpc
from google.protobuf import json_format

from service.errors import (
    BadRequestError,
    ForbiddenError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnauthorizedError,
)
from service.grpc.codec_kserve import (
    InferRequestMessage,
    check_name,
    decode_request,
    encode_response,
    parse_version,
    target,
)
from service.grpc.infer import Context, Front, GrpcDialect, infer, not_ready, unary
from service.grpc.protos import KSERVE, message
from service.inference import InferRequest, InferResponse
from service.model import ModelInfo

PLATFORMS = {"onnx": "onnx_onnxv1", "savedmodel": "tensorflow_savedmodel"}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


def _decode(request: Any, model: ModelInfo, max_bytes: int) -> tuple[InferRequest, Any]:
    arrays, outputs, params = decode_request(request, max_bytes)
    return InferRequest(
        model.name, model.version, arrays, outputs, id=request.id or None, parameters=params
    ), request.id


def _encode(response: InferResponse, request_id: str) -> bytes:
    return encode_response(response.model, response.version, request_id, response.outputs)


V2_GRPC = GrpcDialect("v2_grpc", InferRequestMessage, target, _decode, _encode)


class KServe:
    """The GRPCInferenceService methods tandem implements; the others answer UNIMPLEMENTED."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def handler(self) -> grpc.GenericRpcHandler:
        """Every implemented method, taking and returning serialized messages."""

        async def model_infer(data: bytes, context: Context) -> bytes:
            return await infer(self.front, V2_GRPC, data, context)

        methods = {
            "ServerLive": unary(message("inference.ServerLiveRequest"), self.server_live),
            "ServerReady": unary(message("inference.ServerReadyRequest"), self.server_ready),
            "ModelReady": unary(message("inference.ModelReadyRequest"), self.model_ready),
            "ServerMetadata": unary(message("inference.ServerMetadataRequest"), self.server_metadata),
            "ModelMetadata": unary(message("inference.ModelMetadataRequest"), self.model_metadata),
            "ModelInfer": model_infer,
            "ModelConfig": unary(message("inference.ModelConfigRequest"), self.model_config),
            "ModelStatistics": unary(message("inference.ModelStatisticsRequest"), self.model_statistics),
            "RepositoryIndex": unary(message("inference.RepositoryIndexRequest"), self.repository_index),
            "RepositoryModelLoad": unary(message("inference.RepositoryModelLoadRequest"), self.load),
            "RepositoryModelUnload": unary(message("inference.RepositoryModelUnloadRequest"), self.unload),
        }
        return grpc.method_handlers_generic_handler(
            KSERVE, {name: grpc.unary_unary_rpc_method_handler(serve) for name, serve in methods.items()}
        )

    async def server_live(self, request: Any, context: Context) -> Any:
        """The process answers."""
        return message("inference.ServerLiveResponse")(live=True)

    async def server_ready(self, request: Any, context: Context) -> Any:
        """Ready as /v2/health/ready: every model has a READY version and the server is not draining."""
        return message("inference.ServerReadyResponse")(ready=self.front.ready)

    async def model_ready(self, request: Any, context: Context) -> Any:
        """Whether the version takes requests; false (not an error) for an unknown model, as Triton answers."""
        name = check_name(request.name)
        try:
            ready = self.front.engine.get(name, parse_version(request.version, name)).ready
        except (ModelNotFoundError, ModelNotReadyError):  # unknown, or no version ready
            ready = False
        return message("inference.ModelReadyResponse")(ready=ready)

    async def server_metadata(self, request: Any, context: Context) -> Any:
        """Server name, version and the protocol extensions it implements."""
        version = importlib.metadata.version("tandem")
        return message("inference.ServerMetadataResponse")(name="tandem", version=version, extensions=EXTENSIONS)

    async def model_metadata(self, request: Any, context: Context) -> Any:
        """Name, loaded versions, platform and the input/output signature."""
        model = self._describe(request)
        if model.format is None or model.device is None:
            raise not_ready(model)
        versions = [str(v) for v, m in sorted(self.front.engine.versions(model.name).items()) if m.ready]
        return message("inference.ModelMetadataResponse")(
            name=model.name,
            versions=versions,
            platform=PLATFORMS[model.format],
            inputs=[{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in model.inputs],
            outputs=[{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in model.outputs],
        )

    async def model_config(self, request: Any, context: Context) -> Any:
        """The effective configuration as Triton's ModelConfig (dims exclude the batch dim when batching)."""
        model = self._describe(request)
        limits = model.limits
        batched = bool(limits and limits.max_batch_size > 1)
        config: dict[str, Any] = {
            "name": model.name,
            "platform": PLATFORMS.get(model.format or "", "") if model.device else "",
            "max_batch_size": limits.max_batch_size if limits else 0,
            "input": [_triton_tensor(s.name, s.datatype, s.shape, batched) for s in model.inputs],
            "output": [_triton_tensor(s.name, s.datatype, s.shape, batched) for s in model.outputs],
            "parameters": {
                "version": {"string_value": str(model.version)},
                "state": {"string_value": model.state.value},
                "device": {"string_value": model.device or ""},
            },
        }
        if limits and batched:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(limits.preferred_batch_sizes),
                "max_queue_delay_microseconds": int(limits.max_batch_delay_ms * 1000),
            }
        parsed = json_format.ParseDict(config, message("inference.ModelConfig")())
        return message("inference.ModelConfigResponse")(config=parsed)

    async def model_statistics(self, request: Any, context: Context) -> Any:
        """Cumulative per-version statistics: every model (empty name), every version of one, or one version."""
        engine = self.front.engine
        await engine.sync()
        if not request.name:
            models = [m for m in engine.all_models() if m.version]
        else:
            name = check_name(request.name)
            version = parse_version(request.version, name)
            models = [engine.get(name, version)] if version else [m for _, m in sorted(engine.versions(name).items())]
        response = message("inference.ModelStatisticsResponse")()
        for model in (m for m in models if m.version):
            json_format.ParseDict(model.stats.as_json(model.name, model.version), response.model_stats.add())
        return response

    async def repository_index(self, request: Any, context: Context) -> Any:
        """Every model version the server knows, plus repository models not loaded; `ready` keeps READY ones."""
        engine = self.front.engine
        entries = [_index_entry(m) for m in engine.all_models() if m.ready or not request.ready]
        if not request.ready:
            known = set(engine.names())
            names = await engine.repository_names()
            entries += [{"name": n, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} for n in names - known]
        entries.sort(key=lambda e: (e["name"], int(e["version"] or 0)))
        return message("inference.RepositoryIndexResponse")(models=entries)

    async def load(self, request: Any, context: Context) -> Any:
        """(Re)load a repository model by name and wait for it; behind the same switch and token as HTTP."""
        self._require_control(context)
        name = check_name(request.model_name)
        if any(key == "config" or key.startswith("file:") for key in request.parameters):
            raise BadRequestError("config overrides and file uploads are not supported: load from the repository")
        await self.front.engine.load(name)
        return message("inference.RepositoryModelLoadResponse")()

    async def unload(self, request: Any, context: Context) -> Any:
        """Stop admitting requests, drain, free the runtimes; `unload_dependents` is accepted and ignored."""
        self._require_control(context)
        name = check_name(request.model_name)
        engine = self.front.engine
        try:
            await engine.unload(name)
        except ModelNotFoundError:
            if not await engine.in_repository(name):
                raise
        return message("inference.RepositoryModelUnloadResponse")()

    def _describe(self, request: Any) -> ModelInfo:
        name = check_name(request.name)
        return self.front.engine.describe(name, parse_version(request.version, name))

    def _require_control(self, context: Context) -> None:
        """PERMISSION_DENIED while model control is off; with an admin token, UNAUTHENTICATED unless it matches."""
        settings = self.front.settings
        if not settings.enable_model_control:
            raise ForbiddenError("model control is disabled; start the server with --enable-model-control")
        if settings.admin_token is None:  # only possible on a loopback host (Settings refuses it elsewhere)
            return
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
        expected = settings.admin_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise UnauthorizedError()


def _triton_tensor(name: str, datatype: str, shape: tuple[int, ...], batched: bool) -> dict[str, Any]:
    dims = list(shape[1:]) if batched and shape else list(shape)
    return {"name": name, "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}", "dims": dims}


def _index_entry(model: ModelInfo) -> dict[str, str]:
    entry = {"name": model.name, "version": str(model.version) if model.version else "", "state": model.state.value}
    if model.reason and not model.ready:
        entry["reason"] = model.reason
    return entry
