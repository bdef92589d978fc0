# -*- test-case-name: tests.test_metrics_listener -*-
"""
The client's ``/metrics`` listener (``--metrics-listen``): a small HTTP server made on
``twisted.web.http`` alone.

twisted.web's ``Site`` would serve the one page as well, but importing ``twisted.web.server``
loads Perspective Broker (``twisted.spread``, ``decimal``, ``twisted.cred``), the template
machinery, ``xml.sax``/``pyexpat``, ``hyperlink`` and ``idna``: about 3 MB of the client's
memory, on the small machines it runs on.  Here ``twisted.web.http``'s channel parses the
requests, and a ``MetricsRequest`` answers each in ``process``: ``GET`` and ``HEAD /metrics``
as the proxy's own ``/metrics`` is answered (``pushprox.shared.metrics.metrics_answer``:
the web configuration file's users, the encoder the ``Accept`` header asks for), any other
path 404 and any other method 405, each in one line (``pushprox.shared.answers``); the web
configuration file's headers on every answer.  No access log line per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.web.http import HTTPFactory, Request, datetimeToString
from zope.interface import implementer

from pushprox.shared.answers import SERVER, not_allowed_response, text_response
from pushprox.shared.metrics import metrics_answer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pushprox.shared.auth import ScraperAuth

#: The one path the listener serves, and the methods it serves there.
METRICS_PATH = "/metrics"
METRICS_METHODS = (b"GET", b"HEAD")
#: What any other path is answered, as the proxy's 404 says what its port serves.
NOT_FOUND = f"not found: this is a PushProx client's metrics listener (endpoint {METRICS_PATH})"


@dataclass(frozen=True)
class MetricsPage:
    """What the listener serves: a registry, the users who may read it, the headers."""

    registry: CollectorRegistry
    #: The web configuration file's users (None: anyone may read the page).
    auth: ScraperAuth | None = None
    #: The web configuration file's headers, on every answer; changed in place when the
    #: file is re-read.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class MetricsRequest(Request):
    """A request to the metrics listener, answered at once when its body is in."""

    log = Logger()

    def __init__(self, *args: Any, page: MetricsPage, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._page = page

    def process(self) -> None:
        """Answer: the page, a refusal, a 404 or a 405, with its length."""
        self.setHeader(b"date", datetimeToString())
        self.setHeader(b"server", SERVER)
        for name, value in self._page.headers:
            self.setHeader(name, value)
        try:
            body = self._answer()
        except Exception:
            self.log.failure("Rendering the client's {path} failed", path=METRICS_PATH)
            body = text_response(self, 500, "the metrics could not be rendered")
        self.setHeader(b"content-length", b"%d" % len(body))
        # Written for HEAD too: twisted.web.http sends the head and drops the body.
        self.write(body)
        self.finish()

    def _answer(self) -> bytes:
        if self.path.decode("latin-1") != METRICS_PATH:
            return text_response(self, 404, NOT_FOUND)
        if self.method not in METRICS_METHODS:
            return not_allowed_response(self, METRICS_PATH, METRICS_METHODS)
        return metrics_answer(self, self._page.registry, self._page.auth)


@implementer(IProtocolNegotiationFactory)
class MetricsListenerFactory(HTTPFactory):
    """The HTTP server of the metrics listener: ``MetricsRequest``s, no access log."""

    noisy = False

    def __init__(self, page: MetricsPage, reactor: Any = None) -> None:
        super().__init__(reactor=reactor)
        self.page = page

    def buildProtocol(self, addr: Any) -> Any:
        """twisted.web.http's channel, making ``MetricsRequest``s of this page."""
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol.requestFactory = partial(MetricsRequest, page=self.page)
        return protocol

    def acceptableProtocols(self) -> list[bytes]:
        """
        HTTP/1.1, offered over ALPN on a TLS listener: a factory that offers nothing makes
        Twisted's TLS refuse every client that offers protocols (curl, Go, Prometheus).
        """
        return [b"http/1.1"]

    def startFactory(self) -> None:
        """
        Nothing to start: ``HTTPFactory`` would open the access log and keep its
        timestamp current with a timer every second, for lines this listener never writes.
        """

    def log(self, request: Request) -> None:
        """Reads of the client's metrics are not worth a log line each."""
