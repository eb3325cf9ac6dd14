"""Log lines for every process of the server: one formatter (JSON or text), the request id, and the access log."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from service.api.http import CALL_KEY

# Set by the front door for each request; the task that serves the request (and what it logs) sees it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("tandem_request_id", default=None)
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
access_logger = logging.getLogger("tandem.access")
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Each request's id: the client's X-Request-Id when it is a sane token, else one unique to this process."""

    def __init__(self) -> None:
        self._prefix = f"{os.getpid():x}{secrets.token_hex(3)}-"
        self._counter = itertools.count(1)

    def of(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The id for a request with these (lower-cased) headers."""
        for key, value in headers:
            if key == b"x-request-id":
                if VALID_REQUEST_ID.fullmatch(value.decode("latin-1")):
                    return bytes(value)
                break
        return f"{self._prefix}{next(self._counter)}".encode()


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Never drops a record; only tags it."""
        rid = record.__dict__.setdefault("request_id", REQUEST_ID.get())
        record.request_tag = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        fields = getattr(record, "access", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def resolve_format(log_format: str) -> str:
    """`auto` is text on a terminal and JSON otherwise (a container, a log collector)."""
    if log_format != "auto":
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def setup(level: str, log_format: str) -> None:
    """Route every logger (ours, uvicorn's, the runtimes', Python warnings) through one handler on stderr."""
    # The runtimes' native start-up chatter (TensorFlow's C++ INFO lines) is not the server's to show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if resolve_format(log_format) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in (*UVICORN_LOGGERS, "tensorflow", "absl"):
        named = logging.getLogger(name)
        for old in list(named.handlers):
            named.removeHandler(old)
        named.propagate = True
    access_logger.setLevel(logging.INFO)  # on with --access-log whatever the log level
    logging.captureWarnings(True)


def access_wrapped(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """Wrap one request's receive and send so that one access line is logged when its response ends."""
    started = time.perf_counter()
    counts = [0, 0, 0]  # bytes in, bytes out, status

    async def counting_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            counts[0] += len(message.get("body", b""))
        return message

    async def logging_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            counts[2] = message["status"]
        elif message["type"] == "http.response.body":
            counts[1] += len(message.get("body", b""))
            if not message.get("more_body", False):
                log_access(scope, counts[2], counts[0], counts[1], time.perf_counter() - started)
        await send(message)

    return counting_receive, logging_send


def log_access(scope: Scope, status: int, bytes_in: int, bytes_out: int, seconds: float) -> None:
    """One access line: method, path, model, version, status, bytes in/out, queue, compute and total time."""
    call = scope.get(CALL_KEY)
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": scope["path"],
        "model": call.model if call is not None else None,
        "version": call.version if call is not None else None,
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "queue_ms": round(call.queue_s * 1000, 3) if call is not None else None,
        "compute_ms": round(call.compute_s * 1000, 3) if call is not None else None,
        "total_ms": round(seconds * 1000, 3),
    }
    message = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    access_logger.info(message, extra={"access": fields, "request_id": scope.get("tandem.request_id")})
