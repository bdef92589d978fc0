"""
The contract between twisted.web's ``Request`` and the proxy's channel.

``pushprox.channel.LlhttpChannel`` is not a subclass of ``HTTPChannel``: it provides
what ``twisted.web.server.Request`` uses of its channel, as Twisted's HTTP/2 stream does.
These tests run Request's code paths (bodies, forms, chunked and fixed-length answers,
HEAD, producers, errors, redirects, a peer that goes) once over Twisted's own
``HTTPChannel`` and once over ours, with every attribute Request touches on its channel
recorded, and fail when the installed Twisted's Request uses one our channel lacks or
when the two channels put different bytes on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushprox.proxy.channel import LlhttpChannel

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
#: What HTTPChannel's Request is known to use of its channel, at the least: a recorder
#: that misses these would let any change through.
CORE = {"getPeer", "getHost", "transport", "site", "writeHeaders", "write",
        "writeSequence", "requestDone", "registerProducer", "unregisterProducer",
        "factory", "isSecure", "_respondToBadRequestAndDisconnect"}


class ChannelRecorder:
    """Stands for a channel before its Request: passes everything on, noting each name."""

    def __init__(self, channel: object, names: set[str]) -> None:
        object.__setattr__(self, "_recorded_channel", channel)
        object.__setattr__(self, "_recorded_names", names)

    def __getattr__(self, name: str) -> Any:
        self._recorded_names.add(name)
        return getattr(self._recorded_channel, name)

    def __setattr__(self, name: str, value: object) -> None:
        self._recorded_names.add(name)
        setattr(self._recorded_channel, name, value)

    def __delattr__(self, name: str) -> None:
        self._recorded_names.add(name)
        delattr(self._recorded_channel, name)


@implementer(IPushProducer)
class Producer:
    """A push producer that writes two pieces of the answer and finishes it."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.paused = 0

    def pauseProducing(self) -> None:
        """Count it."""
        self.paused += 1

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""

    def run(self) -> None:
        """Write, unregister, finish."""
        self.request.write(b"produced ")
        self.request.write(b"twice")
        self.request.unregisterProducer()
        self.request.finish()


class Everything(Resource):
    """One path per code path of Request worth running against a channel."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.lost: list[str] = []

    def render(self, request: Request) -> bytes | int:
        """Dispatch on the path."""
        path = request.path.decode()
        handler: Callable[[Request], bytes | int] = getattr(self, "path_" + path.strip("/"))
        return handler(request)

    def path_fixed(self, request: Request) -> bytes:
        """A fixed-length answer, with the request's view of its connection."""
        request.setHeader(b"content-type", b"text/plain")
        address = request.getClientAddress()
        return b"%s %s %r %s %s %s" % (
            request.method, request.uri, request.isSecure(), request.prePathURL(),
            request.getRequestHostname(), str(address).encode())

    def path_chunked(self, request: Request) -> int:
        """A chunked answer, written in pieces."""
        request.write(b"one ")
        request.write(b"two")
        request.finish()
        return NOT_DONE_YET

    def path_form(self, request: Request) -> bytes:
        """A form body, parsed by Request into args."""
        return repr(sorted(request.args.items())).encode()

    def path_cookies(self, request: Request) -> bytes:
        """A cookie, parsed by Request."""
        request.addCookie(b"back", b"2")
        return request.getCookie(b"taste") or b"none"

    def path_produced(self, request: Request) -> int:
        """An answer produced by a push producer."""
        producer = Producer(request)
        request.registerProducer(producer, True)
        producer.run()
        return NOT_DONE_YET

    def path_error(self, request: Request) -> bytes:
        """A resource that fails: Request's error page."""
        raise ZeroDivisionError("on purpose")

    def path_redirect(self, request: Request) -> bytes:
        """A redirect."""
        request.redirect(b"/fixed")
        return b""

    def path_empty(self, request: Request) -> bytes:
        """204: no body at all."""
        request.setResponseCode(204)
        return b""

    def path_held(self, request: Request) -> int:
        """An answer that waits; its peer may go meanwhile."""
        self.held.append(request)
        request.notifyFinish().addErrback(lambda failure: self.lost.append(
            failure.type.__name__ if failure.type else "?"))
        return NOT_DONE_YET


#: Requests that take Request through its paths; each is one connection's input.
SCENARIOS: dict[str, bytes] = {
    "fixed": b"GET /fixed?a=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    "head": b"HEAD /fixed HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked": b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
    "http 1.0": b"GET /chunked HTTP/1.0\r\n\r\n",
    "close": b"GET /fixed HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "form": b"POST /form HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n"
            b"x=1&y=2",
    "chunked body": b"POST /form?q=3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                    b"3\r\nx=1\r\n0\r\n\r\n",
    "bad multipart": b"POST /form HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Type: multipart/form-data; boundary=zz\r\n"
                     b"Content-Length: 5\r\n\r\nnope!",
    "cookies": b"GET /cookies HTTP/1.1\r\nHost: a\r\nCookie: taste=1; other=2\r\n\r\n",
    "produced": b"GET /produced HTTP/1.1\r\nHost: a\r\n\r\n",
    "error": b"GET /error HTTP/1.1\r\nHost: a\r\n\r\n",
    "redirect": b"GET /redirect HTTP/1.1\r\nHost: a\r\n\r\n",
    "no content": b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect": b"POST /form HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\n"
              b"x=1",
    "pipelined": b"GET /fixed HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
    "peer goes": b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n",
}

#: Headers whose value is the time of the answer.
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


class Run:
    """One scenario over one kind of channel: its bytes out, the names Request used."""

    def __init__(self, protocol: type[Any], data: bytes) -> None:
        self.names: set[str] = set()
        self.resource = Everything()
        site = Site(self.resource, timeout=None)
        site.displayTracebacks = False
        site.protocol = protocol  # type: ignore[method-assign]
        site.requestFactory = self._request  # type: ignore[assignment]
        self.channel = site.buildProtocol(CLIENT)
        assert self.channel is not None
        self.transport = StringTransport(peerAddress=CLIENT,
                                         hostAddress=IPv4Address("TCP", "10.0.0.1", 8080))
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(data)
        for request in self.resource.held:
            self.channel.connectionLost(Failure(ConnectionDone()))
            assert request.channel is None

    def _request(self, channel: Any, *args: Any) -> Request:
        return Request(ChannelRecorder(channel, self.names), *args)

    @property
    def output(self) -> bytes:
        """What went out, without the dates."""
        return _DATE.sub(b"\r\nDate: -\r\n", self.transport.value())


class ChannelContractTests(SynchronousTestCase):
    """Request's needs of a channel, met by LlhttpChannel as by HTTPChannel."""

    def setUp(self) -> None:
        # The error scenario's resource fails on purpose: Request logs it.
        self.addCleanup(self.flushLoggedErrors, ZeroDivisionError)

    def run_both(self, name: str) -> tuple[Run, Run]:
        """The scenario ``name`` over HTTPChannel, then over LlhttpChannel."""
        data = SCENARIOS[name]
        return Run(HTTPChannel, data), Run(LlhttpChannel, data)

    def test_the_recorder_sees_what_request_uses(self) -> None:
        """Over HTTPChannel, every scenario together uses at least the known names."""
        names: set[str] = set()
        for name in SCENARIOS:
            names |= self.run_both(name)[0].names
        self.assertEqual(CORE - names, set(),
                         "the recorder no longer sees what Request uses of its channel")

    def test_every_name_request_uses_is_provided(self) -> None:
        """Whatever Request uses of HTTPChannel, LlhttpChannel provides too."""
        for name in SCENARIOS:
            twisted, ours = self.run_both(name)
            missing = {used for used in twisted.names | ours.names
                       if not hasattr(ours.channel, used)}
            self.assertEqual(
                missing, set(),
                f"channel.LlhttpChannel: twisted.web's Request now uses "
                f"{sorted(missing)} of its channel ({name!r}), which LlhttpChannel does not "
                "provide; add it as HTTPChannel and H2Stream do",
            )

    def test_same_bytes_on_the_wire(self) -> None:
        """Each scenario's answer is byte for byte the one HTTPChannel sends (dates aside)."""
        for name in SCENARIOS:
            twisted, ours = self.run_both(name)
            self.assertEqual(ours.output, twisted.output, name)
            self.assertEqual(ours.transport.disconnecting, twisted.transport.disconnecting,
                             name)

    def test_the_peer_going_reaches_the_request(self) -> None:
        """A held request learns that its peer went, as over HTTPChannel."""
        twisted, ours = self.run_both("peer goes")
        self.assertEqual(twisted.resource.lost, ["ConnectionDone"])
        self.assertEqual(ours.resource.lost, twisted.resource.lost)

    def test_request_line_before_the_body(self) -> None:
        """Our channel hands the request its line before ``gotLength``; Twisted's does not."""
        seen: list[tuple[bytes, bytes, bytes]] = []

        class Noting(Request):
            def gotLength(self, length: int | None) -> None:
                seen.append((self.method, self.uri, self.clientproto))
                super().gotLength(length)

        site = Site(Everything(), timeout=None)
        site.protocol = LlhttpChannel  # type: ignore[assignment,method-assign]
        site.requestFactory = Noting
        channel = site.buildProtocol(CLIENT)
        assert channel is not None
        channel.makeConnection(StringTransport(peerAddress=CLIENT))
        channel.dataReceived(SCENARIOS["form"])
        self.assertEqual(seen, [(b"POST", b"/form", b"HTTP/1.1")])
