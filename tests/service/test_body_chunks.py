from __future__ import annotations

from service.http_transport import BodyChunks


def test_one_chunk_reaches_the_app_as_that_same_object() -> None:
    chunk = b"x" * 200_000
    body = BodyChunks()
    body += chunk
    assert len(body) == 200_000
    assert bytes(body) is chunk  # no copy


def test_chunks_are_joined_in_order_and_counted() -> None:
    body = BodyChunks()
    for chunk in (b"ab", b"", b"cde"):
        body += chunk
    assert len(body) == 5
    assert bytes(body) == b"abcde"


def test_an_empty_body_is_empty_bytes() -> None:
    body = BodyChunks()
    assert len(body) == 0
    assert bytes(body) == b""
