"""ServiceError -> gRPC status: the same errors as HTTP, in gRPC's codes, with retry hints as trailing metadata."""

from __future__ import annotations

import grpc

from service.errors import (
    BadRequestError,
    ClientGoneError,
    ConflictError,
    DeadlineExceededError,
    ForbiddenError,
    MethodNotAllowedError,
    ModelLoadError,
    ModelNotFoundError,
    NotImplementedFeatureError,
    OutOfMemoryError,
    PayloadTooLargeError,
    QueueFullError,
    RouteNotFoundError,
    ServiceError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

# Looked up along the error's MRO, so a subclass takes its nearest ancestor's code.
CODES: dict[type[ServiceError], grpc.StatusCode] = {
    BadRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedMediaTypeError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,  # a repository load that failed: HTTP's 400, with the reason
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    RouteNotFoundError: grpc.StatusCode.UNIMPLEMENTED,
    MethodNotAllowedError: grpc.StatusCode.UNIMPLEMENTED,
    NotImplementedFeatureError: grpc.StatusCode.UNIMPLEMENTED,
    ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    PayloadTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own message size limit
    UnauthorizedError: grpc.StatusCode.UNAUTHENTICATED,
    ForbiddenError: grpc.StatusCode.PERMISSION_DENIED,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OutOfMemoryError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ServiceUnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ClientGoneError: grpc.StatusCode.CANCELLED,
}
# The HTTP status a client that went away is counted under (never sent), as on the HTTP routes.
CANCELLED_CODE = 499


def status_code(err: ServiceError) -> grpc.StatusCode:
    """The gRPC code for a domain error; INTERNAL only for real faults."""
    for cls in type(err).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def trailers(err: ServiceError) -> tuple[tuple[str, str], ...]:
    """Retry hints for a retryable refusal: `retry-after` (seconds, as the HTTP header) and gRPC's pushback."""
    retry_after = err.headers.get("Retry-After")
    if retry_after is None:
        return ()
    return (("retry-after", retry_after), ("grpc-retry-pushback-ms", str(int(retry_after) * 1000)))


async def abort(context: grpc.aio.ServicerContext[object, object], err: ServiceError) -> None:
    """End the call with the error's status, message and retry hints."""
    hints = trailers(err)
    if hints:
        context.set_trailing_metadata(hints)
    await context.abort(status_code(err), err.message)
