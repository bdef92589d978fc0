# -*- test-case-name: tests.test_proxy -*-
"""
The proxy's own plain-text answers: one line saying what happened, and its status (the
line and its headers are ``pushprox.shared.answers``', which the client's answers share).
"""

from __future__ import annotations

from twisted.web.server import Request

from pushprox.proxy.channel import StreamingRequest
from pushprox.proxy.lean import LeanRequest
from pushprox.shared.answers import SERVER as SERVER
from pushprox.shared.answers import TEXT as TEXT
from pushprox.shared.answers import text_response as text_response


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
