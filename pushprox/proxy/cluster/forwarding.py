# -*- test-case-name: tests.test_cluster -*-
"""
Carrying a scrape or a push to the replica that can answer it, streamed both ways.

A scrape is sent to its peer in proxy form (``GET http://fqdn:9100/metrics``), as
Prometheus sent it, through a ``ProxyAgent``; the peer answers it as its own and its
response is relayed to Prometheus while it arrives (``ForwardedAnswer``), paused while
Prometheus reads slowly.  A push is sent to the peer's ``/push`` chunked while the
client's body arrives (``ForwardedPushBody``), and the peer's answer goes back to the
client as the peer gave it.  Both carry the peer token; the peer never forwards a push
again, and a scrape only to follow its client's poll (the hop count travels with it).
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ProxyAgent,
    ResponseDone,
    readBody,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from pushprox.proxy.channel import AnswerableRequest
from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.proxy.cluster.routes import RouteTable
from pushprox.proxy.coordinator import CoordinatorError, IScrapeAnswer, ScrapeTimeout
from pushprox.proxy.push import PushReply
from pushprox.shared import wire

#: Largest answer to a forwarded push: empty, or one scrape request (push-poll).
MAX_PUSH_REPLY = 256 * 1024


class PeerUnreachable(CoordinatorError):
    """The replica that holds the client's poll could not be reached."""

    status, outcome = 502, "peer_unreachable"


_CONNECTION_LOST = Failure(ConnectionLost())


class _BodyToRequest(Protocol):
    """Writes a peer's response body into Prometheus' request while it arrives."""

    def __init__(self, request: AnswerableRequest) -> None:
        self._request = request
        self._registered = False

    def connectionMade(self) -> None:
        if self._request.alive:
            # Prometheus reading slowly pauses the peer's connection, and so the push.
            self._request.registerProducer(cast(IPushProducer, self.transport), True)
            self._registered = True
            self._request.notifyFinish().addErrback(lambda _: self.stop())

    def dataReceived(self, data: bytes) -> None:
        if self._request.alive:
            self._request.write(data)

    def connectionLost(self, reason: Failure = _CONNECTION_LOST) -> None:
        request = self._request
        if not request.alive:
            return
        if self._registered:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
        else:
            # Cut short at the peer: an incomplete answer must not look whole.
            request.loseConnection()

    def stop(self) -> None:
        """Prometheus went away, or the scrape's time is up: drop the peer's response."""
        transport = self.transport
        if transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]


@implementer(IScrapeAnswer)
class ForwardedAnswer:
    """A peer replica's answer to a forwarded scrape, relayed as the peer gave it."""

    failure: str | None = None

    def __init__(self, response: IResponse) -> None:
        self.status = response.code
        self._response = response
        self._body: _BodyToRequest | None = None

    def deliver(self, request: AnswerableRequest) -> None:
        """Write the peer's status and headers, then its body as it arrives."""
        prometheus = request
        response = self._response
        prometheus.setResponseCode(response.code, response.phrase or None)
        headers = prometheus.responseHeaders
        headers.removeHeader(b"server")
        headers.removeHeader(b"date")
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in wire.NOT_RELAYED:
                headers.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH:
            headers.setRawHeaders(b"content-length", [b"%d" % cast(int, response.length)])
        prometheus.defaultContentType = None
        self._body = _BodyToRequest(prometheus)
        response.deliverBody(self._body)

    def abort(self) -> None:
        """Cut Prometheus off and drop the peer's response."""
        if self._body is not None:
            self._body.stop()


@implementer(IBodyProducer)
class ForwardedPushBody:
    """
    A push body sent on to its owner while the client's body arrives.

    The client's transport is paused until the peer connection is ready, and whenever
    the peer reads slowly, so nothing more than a socket buffer is held here.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, client: IPushProducer | None) -> None:
        self._client = client
        self._consumer: IConsumer | None = None
        self._pending: list[bytes] = []
        self._done: Deferred[None] = Deferred()
        self._paused = False
        self._pause_client()

    def _pause_client(self) -> None:
        if self._client is not None and not self._paused:
            self._paused = True
            self._client.pauseProducing()

    def _resume_client(self) -> None:
        if self._client is not None and self._paused:
            self._paused = False
            self._client.resumeProducing()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """The peer connection is ready: send what came, read the client again."""
        self._consumer = consumer
        pending, self._pending = self._pending, []
        for data in pending:
            consumer.write(data)
        self._resume_client()
        return self._done

    def write(self, data: bytes) -> None:
        """Send the next bytes of the push."""
        if self._consumer is None:
            self._pending.append(data)
        else:
            self._consumer.write(data)

    def finish(self) -> None:
        """The whole push has been sent."""
        self._resume_client()
        if not self._done.called:
            self._done.callback(None)

    def abort(self) -> None:
        """The client's push broke off: the peer's request is cut off too."""
        self._resume_client()
        if not self._done.called:
            self._done.errback(ConnectionLost("the client's push broke off"))

    def pauseProducing(self) -> None:
        """The peer reads slowly: stop reading the client."""
        self._pause_client()

    def resumeProducing(self) -> None:
        """The peer reads again."""
        self._resume_client()

    def stopProducing(self) -> None:
        """The peer connection is gone: let the client's push run to its end."""
        self._resume_client()


class ForwardedPush:
    """A push on its way to the replica that owns its scrape, and that replica's answer."""

    def __init__(self, body: ForwardedPushBody, reply: Deferred[PushReply]) -> None:
        self._body = body
        self.reply = reply

    def feed(self, data: bytes) -> None:
        """The next bytes of the push body."""
        self._body.write(data)

    def finish(self) -> None:
        """The whole body has been fed."""
        self._body.finish()

    def abort(self) -> None:
        """The client's push broke off."""
        self._body.abort()


class Peers:
    """This replica's connections to the others: forwards scrapes and pushes."""

    log = Logger()

    def __init__(self, reactor: Any, routes: RouteTable, token: str,
                 metrics: ClusterMetrics) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._routes = routes
        self._token = token.encode("utf-8")
        self._metrics = metrics
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 16
        self._scrape_agents: dict[str, ProxyAgent] = {}
        self._push_agent = Agent(reactor, pool=self._pool)

    def _scrape_agent(self, peer: str) -> ProxyAgent:
        agent = self._scrape_agents.get(peer)
        if agent is None:
            parts = urlsplit(peer)
            https = parts.scheme == "https"
            endpoint: Any = HostnameEndpoint(self._reactor, parts.hostname or "",
                                             parts.port or (443 if https else 80))
            if https:
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(parts.hostname or ""), endpoint,
                                         clock=self._clock)
            agent = self._scrape_agents[peer] = ProxyAgent(endpoint, self._reactor, self._pool)
        return agent

    def forward_scrape(self, peer: str, method: bytes, url: bytes,
                       headers: list[tuple[bytes, bytes]], timeout: float, hops: int = 1,
                       ) -> Deferred[IScrapeAnswer]:
        """Send a scrape to ``peer`` and answer with what it answers, or fail in time."""
        sent = Headers()
        for name, value in wire.without(headers, wire.HOP_BY_HOP | wire.PEER_HEADERS | {
            b"host", wire.TIMEOUT_HEADER.lower()}):
            sent.addRawHeader(name, value)
        sent.setRawHeaders(wire.TIMEOUT_HEADER, [wire.format_timeout(timeout)])
        sent.setRawHeaders(wire.PEER_TOKEN_HEADER, [self._token])
        sent.setRawHeaders(wire.HOP_HEADER, [b"%d" % hops])
        request = self._scrape_agent(peer).request(method, url, sent)

        def timed_out(result: object, seconds: float) -> object:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise ScrapeTimeout(f"the replica at {peer} holding the client's poll did "
                                    f"not answer within the scrape timeout ({seconds:g}s)")
            return result

        request.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)

        def answered(response: IResponse) -> IScrapeAnswer:
            self._metrics.forwarded_scrapes.labels(str(response.code)).inc()
            return ForwardedAnswer(response)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(ScrapeTimeout, CancelledError):
                return failure
            self._metrics.forwarded_scrapes.labels("0").inc()
            raise PeerUnreachable(f"the replica at {peer} holding the client's poll could "
                                  f"not be reached: {failure.getErrorMessage()}")

        forwarded: Deferred[IScrapeAnswer] = request.addCallbacks(answered, unreachable)
        return forwarded

    def owner(self, scrape_id: str) -> Deferred[str | None] | str | None:
        """The peer URL of the live replica that owns ``scrape_id``, when another."""
        return self._routes.replica_of(scrape_id)

    def forward(self, peer: str, principal: str | None, push_poll: bool,
                transport: IPushProducer | None) -> ForwardedPush:
        """Start sending a push to ``peer``'s ``/push``."""
        headers = Headers({b"User-Agent": [b"pushprox-replica"],
                           wire.PEER_TOKEN_HEADER: [self._token]})
        if principal is not None:
            headers.setRawHeaders(wire.PRINCIPAL_HEADER, [principal.encode("utf-8")])
        if push_poll:
            headers.setRawHeaders(wire.PUSH_POLL_HEADER, [b"1"])
        body = ForwardedPushBody(transport)
        url = peer.rstrip("/").encode("ascii") + b"/push"
        response = self._push_agent.request(b"POST", url, headers, body)

        def read(response: IResponse) -> Deferred[PushReply]:
            self._metrics.forwarded_pushes.labels(str(response.code)).inc()
            kept = tuple((name, value) for name, values in response.headers.getAllRawHeaders()
                         for value in values
                         if name.lower() in (b"content-type", wire.NEXT_SCRAPE_HEADER.lower()))
            return readBody(response).addCallback(
                lambda body: PushReply(response.code, kept, body[:MAX_PUSH_REPLY]))

        def unreachable(failure: Failure) -> Failure:
            self._metrics.forwarded_pushes.labels("0").inc()
            return failure

        reply: Deferred[PushReply] = response.addCallback(read)
        reply.addErrback(unreachable)
        return ForwardedPush(body, reply)

    def close(self) -> Deferred[None]:
        """Close the connections to the other replicas."""
        closing = self._pool.closeCachedConnections()
        return closing if closing is not None else succeed(None)
