"""TF Serving over gRPC: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from service.codec_tfserving import signature_def
from service.errors import BadRequestError, NotImplementedFeatureError, VersionNotFoundError
from service.grpc.codec_kserve import check_name
from service.grpc.infer import Context, Front, GrpcDialect, infer, not_ready, refuse, unary
from service.grpc.protos import MODEL_SERVICE, PREDICTION, enum_values, message
from service.grpc.tensor_proto import fill_tensor_proto, to_array
from service.inference import InferRequest, InferResponse
from service.model import ModelInfo, ModelState
from service.repository import LABEL

PredictRequest = message("tensorflow.serving.PredictRequest")
PredictResponse = message("tensorflow.serving.PredictResponse")
_STATES = enum_values("tensorflow.serving.ModelVersionStatus.State")
_STATE_NAMES = {
    ModelState.LOADING: "LOADING",
    ModelState.READY: "AVAILABLE",
    ModelState.UNLOADING: "UNLOADING",
    ModelState.UNAVAILABLE: "END",
}
_UNKNOWN = enum_values("tensorflow.error.Code")["UNKNOWN"]
SIGNATURE_DEF = "signature_def"


def target(request: Any) -> tuple[str, int | None, str | None]:
    """The model a request's ModelSpec names, and its version or version label (neither: the default)."""
    spec = request.model_spec
    name = check_name(spec.name)
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value <= 0:
            raise VersionNotFoundError(f"model '{name}' has no version {spec.version.value}")
        return name, spec.version.value, None
    if choice == "version_label":
        if not LABEL.fullmatch(spec.version_label):
            raise BadRequestError("version_label must match [A-Za-z0-9_]+")
        return name, None, spec.version_label
    return name, None, None


def _decode(request: Any, model: ModelInfo, max_bytes: int) -> tuple[InferRequest, Any]:
    served = model.signature_name or ""
    asked = request.model_spec.signature_name or served
    if asked != served:
        raise BadRequestError(f"{model.label}: unknown signature '{asked:.64}'; this model serves '{served}'")
    arrays = {
        name: to_array(tensor, f"{model.label}: input '{name}'", max_bytes) for name, tensor in request.inputs.items()
    }
    wanted = list(request.output_filter)
    if len(set(wanted)) != len(wanted):
        raise BadRequestError(f"{model.label}: output_filter names an output more than once")
    return InferRequest(model.name, model.version, arrays, tuple(wanted) or None), served


def _encode(response: InferResponse, signature: str) -> bytes:
    answer = PredictResponse()
    spec = answer.model_spec
    spec.name, spec.signature_name = response.model, signature
    spec.version.value = response.version
    for name, arr in response.outputs.items():
        fill_tensor_proto(answer.outputs[name], arr)
    serialized: bytes = answer.SerializeToString()
    return serialized


TFSERVING_GRPC = GrpcDialect("tfserving_grpc", PredictRequest, target, _decode, _encode)


class TFServing:
    """The PredictionService and ModelService methods; Classify, Regress and MultiInference are refused."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """One generic handler per service."""

        async def predict(data: bytes, context: Context) -> bytes:
            return await infer(self.front, TFSERVING_GRPC, data, context)

        def refused(method: str) -> Any:
            async def serve(data: bytes, context: Context) -> bytes:
                err = NotImplementedFeatureError(f"{method} is not supported; use Predict")
                return await refuse(self.front, TFSERVING_GRPC, err, context)

            return serve

        prediction = {
            "Predict": predict,
            "GetModelMetadata": unary(message("tensorflow.serving.GetModelMetadataRequest"), self.metadata),
            **{method: refused(method) for method in ("Classify", "Regress", "MultiInference")},
        }
        status = {"GetModelStatus": unary(message("tensorflow.serving.GetModelStatusRequest"), self.status)}
        return [
            grpc.method_handlers_generic_handler(
                service, {k: grpc.unary_unary_rpc_method_handler(v) for k, v in m.items()}
            )
            for service, m in ((PREDICTION, prediction), (MODEL_SERVICE, status))
        ]

    async def metadata(self, request: Any, context: Context) -> Any:
        """The model spec and its serving signature as a SignatureDefMap, packed in `metadata["signature_def"]`."""
        fields = list(request.metadata_field)
        if not fields:
            raise BadRequestError("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [f for f in fields if f != SIGNATURE_DEF]
        if unsupported:
            raise BadRequestError(f"Metadata field {unsupported[0]:.64} is not supported")
        name, version, label = target(request)
        model = self.front.engine.get(name, version, label)
        if model.signature_name is None:
            raise not_ready(model)
        signatures = signature_def(model.signature_name, model.inputs, model.outputs)
        signature_map = json_format.ParseDict(
            {"signature_def": signatures}, message("tensorflow.serving.SignatureDefMap")()
        )
        response = message("tensorflow.serving.GetModelMetadataResponse")()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response

    async def status(self, request: Any, context: Context) -> Any:
        """Each version's state (START, LOADING, AVAILABLE, UNLOADING, END) and, for a failed one, its reason."""
        name, version, label = target(request)
        engine = self.front.engine
        if version is None and label is None:
            models = sorted(engine.versions(name).values(), key=lambda m: m.version, reverse=True)
        else:
            models = [engine.get(name, version, label)]
        response = message("tensorflow.serving.GetModelStatusResponse")()
        for model in models:
            entry = response.model_version_status.add(version=model.version, state=_STATES[_STATE_NAMES[model.state]])
            if model.state is ModelState.UNAVAILABLE and model.reason not in (None, "unloaded"):
                entry.status.error_code = _UNKNOWN
                entry.status.error_message = model.reason
        return response
