# -*- test-case-name: tests.test_proxy -*-
"""The proxy's own plain-text answers: one line saying what happened, and its status."""

from __future__ import annotations

from twisted.web.server import Request

from pushprox.proxy.channel import StreamingRequest
from pushprox.proxy.lean import LeanRequest

SERVER = b"pushprox"
TEXT = b"text/plain; charset=utf-8"


def text_response(request: Request | LeanRequest, code: int, message: str) -> bytes:
    """Set ``code`` and return ``message`` as a one-line plain-text body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"server", SERVER)
    return message.encode("utf-8") + b"\n"


def finish_with(request: StreamingRequest | LeanRequest, code: int, message: str) -> None:
    """Answer a request held open with NOT_DONE_YET, unless its peer has gone."""
    if request.alive:
        body = text_response(request, code, message)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def scrape_answer(request: Request | LeanRequest, body: bytes) -> bytes:
    """Set the headers of an answer that hands a client a scrape request ``body``."""
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body
