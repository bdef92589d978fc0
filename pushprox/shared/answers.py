# -*- test-case-name: tests.test_metrics_listener -*-
"""
The one-line plain-text answers both programs give on their own endpoints: the status, a
line saying what happened, and the headers that go with it (a refusal's challenge, a 405's
``Allow``).

Written against ``Answerable``, what these answers need of a request, so that the proxy's
twisted.web requests, its lean requests and the client's metrics listener's requests (made
on ``twisted.web.http`` alone) answer with the same bytes from one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pushprox.shared.auth import Denied, ScraperAuth

#: The ``Server`` header of the programs' own answers.
SERVER = b"pushprox"
#: The content type of a one-line answer.
TEXT = b"text/plain; charset=utf-8"


class Answerable(Protocol):
    """What the answers here need of a request (twisted.web's ``IRequest`` has it all)."""

    method: bytes

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """Set the status of the answer."""

    def setHeader(self, name: bytes, value: bytes) -> None:
        """Set one response header, replacing any of that name."""

    def getHeader(self, key: bytes) -> bytes | None:
        """The value of a request header, if it was sent."""

    def getClientAddress(self) -> Any:
        """The address of the peer (an ``IAddress``)."""


def text_response(request: Answerable, code: int, message: str) -> bytes:
    """Set ``code`` and return ``message`` as a one-line plain-text body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"server", SERVER)
    return message.encode("utf-8") + b"\n"


def denied_response(request: Answerable, denied: Denied) -> bytes:
    """Answer a request that failed authentication or authorization."""
    if denied.challenge is not None:
        request.setHeader(*denied.challenge)
    return text_response(request, denied.code, denied.message)


def not_allowed_response(request: Answerable, path: str, allowed: Iterable[bytes]) -> bytes:
    """Answer a method ``path`` does not serve: 405, ``Allow`` and the methods it does."""
    methods = b", ".join(sorted(allowed))
    request.setHeader(b"allow", methods)
    return text_response(request, 405, f"{request.method.decode('latin-1')} is not served "
                         f"at {path}: use {methods.decode('latin-1')}")


def peer_host(request: Answerable) -> str | None:
    """The IP address of the request's peer, if it has one."""
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else None


def refusal(request: Answerable, auth: ScraperAuth | None) -> bytes | None:
    """
    The answer of a request to a program's own endpoint that ``auth`` (the scrapers'
    networks and passwords) does not allow, set on ``request``; None if it may go on.
    """
    if auth is None:
        return None
    # Imported here: a program without users or networks does not load it.
    from pushprox.shared.auth import Denied

    try:
        auth.check(peer_host(request), request.getHeader(b"authorization"), proxy=False)
    except Denied as denied:
        return denied_response(request, denied)
    return None
