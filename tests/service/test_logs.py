"""The log formatter and the request-id tag, on real logging records."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from service import logs


def emit(formatter: logging.Formatter, request_id: str | None, *, error: bool = False) -> str:
    """Log one line through a handler set up like the server's; what it wrote."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("tandem.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = logs.REQUEST_ID.set(request_id)
    try:
        if error:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed %s", "here")
        else:
            logger.warning("hello %s", "world")
    finally:
        logs.REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_line_has_the_fields_and_the_request_id() -> None:
    line = json.loads(emit(logs.JsonFormatter(), "abc-1"))
    assert line["level"] == "WARNING"
    assert line["logger"] == "tandem.test_logs"
    assert line["message"] == "hello world"
    assert line["request_id"] == "abc-1"
    assert line["time"].endswith("+00:00")


def test_json_line_without_a_request_carries_no_id_and_keeps_the_traceback_on_one_line() -> None:
    text = emit(logs.JsonFormatter(), None, error=True)
    assert text.count("\n") == 1
    line = json.loads(text)
    assert "request_id" not in line
    assert "ValueError: boom" in line["exception"]


def test_text_line_tags_the_request_id() -> None:
    assert "tandem.test_logs [abc-2]: hello world" in emit(logging.Formatter(logs.TEXT_FORMAT), "abc-2")
    assert "tandem.test_logs: hello world" in emit(logging.Formatter(logs.TEXT_FORMAT), None)


def test_auto_format_is_json_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert logs.resolve_format("auto") == "json"
    assert logs.resolve_format("text") == "text"
