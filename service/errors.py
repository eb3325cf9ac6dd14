"""Domain errors: one base class whose subclasses carry their HTTP status and metric outcome."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see; lower layers raise these, only api/ maps them to HTTP."""

    status_code: ClassVar[int] = 500
    outcome: ClassVar[str] = "internal"
    ts_type: ClassVar[str] = "InternalServerException"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequestError(ServiceError):
    """The request is malformed: bad JSON, wrong shape, dtype, names or parameters."""

    status_code = 400
    outcome = "bad_request"
    ts_type = "BadRequestException"


class BatchTooLargeError(BadRequestError):
    """A request carries more rows than the model's max_batch_size."""


class ModelNotFoundError(ServiceError):
    """No model of that name is known to the registry."""

    status_code = 404
    outcome = "not_found"
    ts_type = "ModelNotFoundException"


class VersionNotFoundError(ModelNotFoundError):
    """The model exists but not that version (or label)."""

    ts_type = "ModelVersionNotFoundException"


class RouteNotFoundError(ServiceError):
    """No route matches the path."""

    status_code = 404
    outcome = "not_found"
    ts_type = "ResourceNotFoundException"


class MethodNotAllowedError(ServiceError):
    """The route exists but not for this HTTP method."""

    status_code = 405
    outcome = "bad_request"
    ts_type = "MethodNotAllowedException"


class ConflictError(ServiceError):
    """The change asked for conflicts with what is loaded (e.g. registering a loaded model)."""

    status_code = 409
    outcome = "bad_request"
    ts_type = "ConflictStatusException"


class PayloadTooLargeError(ServiceError):
    """The body exceeds max_body_bytes (raw or decoded)."""

    status_code = 413
    outcome = "too_large"
    ts_type = "RequestEntityTooLargeException"


class UnsupportedMediaTypeError(ServiceError):
    """The Content-Type or Content-Encoding is not one this route reads."""

    status_code = 415
    outcome = "unsupported_media"
    ts_type = "UnsupportedMediaTypeException"


class UnauthorizedError(ServiceError):
    """A control endpoint was called without the right bearer token."""

    status_code = 401
    outcome = "unauthorized"
    ts_type = "InvalidKeyException"

    def __init__(self, message: str = "missing or invalid bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServiceError):
    """Model control is disabled on this server."""

    status_code = 403
    outcome = "unauthorized"
    ts_type = "ModelControlDisabledException"


class NotImplementedFeatureError(ServiceError):
    """A route of a dialect that tandem does not implement (e.g. TF Serving :classify)."""

    status_code = 501
    outcome = "not_implemented"
    ts_type = "NotImplementedException"


class ServiceUnavailableError(ServiceError):
    """The server cannot take this request now; the client may retry after Retry-After seconds."""

    status_code = 503
    outcome = "not_ready"
    ts_type = "ServiceUnavailableException"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class ModelNotReadyError(ServiceUnavailableError):
    """The model version is loading, unloading, paused or failed."""


class QueueFullError(ServiceUnavailableError):
    """The model's queue holds max_queue_size requests already."""

    outcome = "queue_full"


class QueueTimeoutError(ServiceUnavailableError):
    """The request waited longer than queue_timeout_ms before its batch started."""

    outcome = "queue_timeout"


class ShuttingDownError(ServiceUnavailableError):
    """The server is draining after SIGTERM and admits no new work."""

    outcome = "shutting_down"

    def __init__(self, message: str = "server is shutting down", *, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.headers["Connection"] = "close"


class OutOfMemoryError(ServiceUnavailableError):
    """The runtime ran out of device memory for this batch."""

    outcome = "oom"


class DeadlineExceededError(ServiceError):
    """The request's own deadline passed before it could be answered."""

    status_code = 504
    outcome = "deadline"
    ts_type = "DeadlineExceededException"


class ClientGoneError(ServiceError):
    """The client closed the connection while its request waited; it never runs, and nothing can be sent."""

    status_code = 499
    outcome = "cancelled"
    ts_type = "ClientClosedRequestException"


class InternalError(ServiceError):
    """A real fault on the server side; the message sent to clients is generic."""


class ModelLoadError(ServiceError):
    """A model version failed to load; the message is sanitised (no paths, no runtime dumps)."""

    status_code = 400
    outcome = "bad_request"
    ts_type = "BadRequestException"


def error_body_v2(err: ServiceError) -> dict[str, str]:
    """E1 body used by KServe V2, TF Serving and KServe V1: {"error": msg}."""
    return {"error": err.message}


def error_body_torchserve(err: ServiceError) -> dict[str, object]:
    """E2 body used by every TorchServe route: {"code", "type", "message"}."""
    return {"code": err.status_code, "type": err.ts_type, "message": err.message}
