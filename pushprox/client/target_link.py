# -*- test-case-name: tests.test_target_link -*-
"""
The client's link to its targets: a scrape's request out, the target's response streamed
into the push.

``Agent`` builds a request, a response, a Python parser and a body protocol for every
scrape, which cost more CPU than the rest of the client's work on it.  ``TargetLink``
sends plain-HTTP ``GET`` scrapes on keep-alive connections of its own (one request at a
time on each, as ``ProxyLink`` does with the proxy), parses the response head with llhttp
(``httptools``) and hands the body to the push as it arrives, with flow control both
ways.  ``https://`` targets and ``HEAD`` scrapes go through the ``Agent`` it was given:
TLS connections cost far more than the HTTP around them, and a ``HEAD`` response, which
llhttp cannot be told has no body, is rare.

Ownership: ``TargetLink`` owns one ``_Pool`` per host and port (a bounded number of
them); a pool owns its idle connections (``_idle``, a connection leaves it when taken for
a scrape or when it is lost).  A ``_Connection`` owns at most one ``_Exchange`` at a
time, from the moment its request is written until its response's body has ended or
failed.  The exchange's ``Deferred`` fires exactly once, with the response once its head
has arrived (the body then flows through ``TargetResponse``) or with a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from pushprox.client.link import (
    KeepAlivePool,
    LlhttpConnection,
    QuietFactory,
    RequestHead,
    cancel_exchange,
    request_head,
)
from pushprox.shared.twisted_internals import send_now

_CONNECTION_DONE = Failure(ConnectionDone())
#: Longest response head read from a target (status line and header lines).
MAX_HEAD = 64 * 1024
#: Body bytes held while the push has not started reading them; the target's
#: connection is paused beyond this.
MAX_HELD = 64 * 1024
#: Idle connections kept per target host and port.
MAX_IDLE = 16
#: Target hosts and ports with connections kept.
MAX_POOLS = 256
#: Serialized request heads kept (one per target and Prometheus job, typically).
MAX_HEADS = 256


class BadResponse(Exception):
    """The target's response is not HTTP/1.x that can be read; ``str()`` says why."""


class ScrapedResponse(TypingProtocol):
    """A target's response as the push needs it: the head, then the body as a producer."""

    code: int
    phrase: bytes
    #: Every header as received (framing headers too), in order.
    headers: list[tuple[bytes, bytes]]
    #: The body's length when the target framed it with Content-Length, else None.
    body_length: int | None

    def push_body(self, head: bytes) -> IBodyProducer:
        """The push body: ``head``, then the target's body as it arrives."""

    def discard(self) -> None:
        """The body will not be read: drop the target's connection if it still runs."""


class TargetLink:
    """
    Scrapes targets: plain-HTTP ``GET`` requests over keep-alive connections of its own,
    anything else through ``agent``.

    ``endpoint`` makes the endpoint of a scheme, host and port (direct or through an
    HTTP proxy's tunnel).  A connection goes back to the idle ones after a whole
    response unless the target said ``Connection: close``, answered in HTTP/1.0 or
    delimited the body by closing.  A scrape on a reused connection that the target
    closes before any byte of the response (it closed the idle connection as the
    request went out) is sent once more on a new connection, as ``Agent`` does.
    Cancelling a scrape's ``Deferred`` drops its connection.
    """

    def __init__(self, endpoint: Callable[[bytes, bytes, int], IStreamClientEndpoint],
                 agent: IAgent, *, max_idle: int = MAX_IDLE, max_head: int = MAX_HEAD
                 ) -> None:
        self._endpoint = endpoint
        self._agent = agent
        self._max_idle = max_idle
        self._max_head = max_head
        self._pools: dict[tuple[bytes, int], _Pool] = {}
        #: Request heads serialized before: Prometheus sends the same headers each time.
        self._heads: dict[tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]],
                          RequestHead] = {}
        self._closing = False

    def get(self, *, scheme: bytes, method: bytes, url: bytes, host: bytes, port: int,
            path: bytes, host_header: bytes, headers: Sequence[tuple[bytes, bytes]]
            ) -> Deferred[ScrapedResponse]:
        """
        Send a scrape's request: ``method`` of ``url`` (``path`` on ``host`` and
        ``port``), with ``Host: host_header`` and ``headers``; fires with the response
        once its head has arrived.
        """
        if scheme != b"http" or method != b"GET":
            return self._through_agent(method, url, host_header, headers)
        pool = self._pools.get((host, port))
        if pool is None:
            if len(self._pools) >= MAX_POOLS:
                for old in self._pools.values():
                    old.close()
                self._pools.clear()
            pool = self._pools[(host, port)] = _Pool(
                self._endpoint(scheme, host, port), self._max_idle, self._max_head,
                closing=self._closing)
        key = (path, host_header, tuple(headers))
        head = self._heads.get(key)
        if head is None:
            try:
                head = request_head(method, path, host_header, headers)
            except ValueError as error:
                return fail(error)
            if len(self._heads) >= MAX_HEADS:
                self._heads.clear()
            self._heads[key] = head
        exchange = _Exchange(head)
        exchange.deferred = Deferred(exchange.cancel)
        pool._send(exchange)
        return exchange.deferred

    def _through_agent(self, method: bytes, url: bytes, host_header: bytes,
                       headers: Sequence[tuple[bytes, bytes]]) -> Deferred[ScrapedResponse]:
        request_headers = Headers()
        for name, value in headers:
            request_headers.addRawHeader(name, value)
        request_headers.setRawHeaders(b"host", [host_header])
        requesting = self._agent.request(method, url, request_headers, None)

        def adapt(response: IResponse) -> ScrapedResponse:
            return _AgentResponse(response)

        return requesting.addCallback(adapt)

    def close(self) -> Deferred[None]:
        """Close the idle connections (each busy one once its scrape is over); fires when
        they are closed.  Scrapes made later still work, each on a connection of its own."""
        self._closing = True
        waits = [pool.close() for pool in self._pools.values()]
        return DeferredList(waits).addCallback(lambda _: None)

    def idle_connections(self) -> int:
        """How many plain-HTTP connections wait for a scrape."""
        return sum(len(pool._idle) for pool in self._pools.values())


class _Pool(KeepAlivePool["_Connection"]):
    """The connections to one target host and port."""

    def __init__(self, endpoint: IStreamClientEndpoint, max_idle: int, max_head: int, *,
                 closing: bool) -> None:
        super().__init__(endpoint, max_idle)
        self.max_head = max_head
        self._closing = closing

    def _factory(self) -> IProtocolFactory:
        return QuietFactory(lambda: _Connection(self))

    def close(self) -> Deferred[None]:
        """Close the idle connections; later ones are closed after their scrape."""
        return self._close_idle()


class _Exchange:
    """One scrape's request, across the connections it may be sent on."""

    __slots__ = ("connecting", "connection", "deferred", "head", "retried")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.deferred: Deferred[ScrapedResponse]
        #: The connection being made for this scrape.
        self.connecting: Deferred[Any] | None = None
        #: The connection this scrape was written on.
        self.connection: _Connection | None = None
        #: Sent a second time after a reused connection was closed under it.
        self.retried = False

    def cancel(self, deferred: Deferred[ScrapedResponse]) -> None:
        """Fail with CancelledError, then stop connecting or drop the connection."""
        cancel_exchange(deferred, self.connecting, self.connection)


_FINISHED = object()


@implementer(IBodyProducer, IPushProducer)
class TargetResponse:
    """
    A target's response read by ``TargetLink``: its head, and its body as the push's
    producer.

    Body bytes that arrive before the push reads them are held (up to ``MAX_HELD``,
    then the target's connection is paused); the push's transport then pauses and
    resumes the target's connection as the proxy reads.
    """

    def __init__(self, connection: _Connection, code: int, phrase: bytes,
                 headers: list[tuple[bytes, bytes]], body_length: int | None) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.body_length = body_length
        self.length: int | object = UNKNOWN_LENGTH
        #: The connection the body still comes from; None once it has ended.
        self._connection: _Connection | None = connection
        self._head = b""
        self._held: list[bytes] = []
        self._held_size = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        #: ``_FINISHED`` or the Failure the body ended with; None while it flows.
        self._outcome: object = None

    # -- the push's side --

    def push_body(self, head: bytes) -> IBodyProducer:
        """The push body: ``head``, then this body."""
        self._head = head
        if self.body_length is not None:
            self.length = len(head) + self.body_length
        return self

    def discard(self) -> None:
        """The body will not be read: drop the target's connection if it still runs."""
        self.stopProducing()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Write the head with what has arrived of the body, then the rest as it comes."""
        self._consumer = consumer
        self._done = done = Deferred[None]()
        if self._connection is not None:
            # Resumed first: the write below may pause it again, for the push's sake.
            self._connection.resume()
        held, self._held = self._held, []
        self._held_size = 0
        data = self._head + b"".join(held)
        self._head = b""
        if data:
            consumer.write(data)
        outcome = self._outcome
        if outcome is _FINISHED:
            done.callback(None)
        elif outcome is not None:
            done.errback(cast(Failure, outcome))
        return done

    def pauseProducing(self) -> None:
        """Stop reading from the target while the proxy catches up."""
        if self._connection is not None:
            self._connection.pause()

    def resumeProducing(self) -> None:
        """Read from the target again."""
        if self._connection is not None:
            self._connection.resume()

    def stopProducing(self) -> None:
        """The push was cancelled: drop the target's connection with it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    # -- the connection's side --

    def received(self, data: bytes) -> None:
        """Body bytes from the target."""
        consumer = self._consumer
        if consumer is not None:
            consumer.write(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > MAX_HELD and self._connection is not None:
            self._connection.pause()

    def finished(self) -> None:
        """The whole body has arrived."""
        self._connection = None
        self._outcome = _FINISHED
        if self._done is not None and not self._done.called:
            self._done.callback(None)

    def failed(self, failure: Failure) -> None:
        """The body broke off."""
        self._connection = None
        self._outcome = failure
        if self._done is not None and not self._done.called:
            self._done.errback(failure)


class _Connection(LlhttpConnection["_Pool"]):
    """One connection to a target: writes a scrape's request, parses its response."""

    def __init__(self, pool: _Pool) -> None:
        self._exchange: _Exchange | None = None
        self._response: TargetResponse | None = None
        self._paused = False
        super().__init__(pool)

    def _expecting(self) -> bool:
        return self._exchange is not None

    def send(self, exchange: _Exchange, *, reused: bool) -> None:
        """Write ``exchange``'s request (one ``send()``, at once); its response is awaited."""
        assert self._exchange is None and self.transport is not None
        self._reset()
        self._response = None
        self._reused = reused
        self._exchange = exchange
        exchange.connection = self
        send_now(self.transport, exchange.head.data + b"\r\n")

    def pause(self) -> None:
        """Stop reading the response's body for now."""
        if not self._paused and not self._lost and self.transport is not None:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def resume(self) -> None:
        """Read the response's body again."""
        if self._paused and not self._lost and self.transport is not None:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()

    # -- the response, from llhttp --

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._code = code = self._parser.get_status_code()
        if 100 <= code < 200:
            return  # an interim response (100 Continue): the real one follows
        self._headers_done = True
        body_length: int | None = None
        framed = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                framed, body_length = True, None
                break
            if lower == b"content-length":
                framed, body_length = True, int(value)
        if code in (204, 304):
            framed, body_length = True, 0
        self._until_close = not framed
        assert self._exchange is not None
        self._response = TargetResponse(self, code, self._phrase, self._headers, body_length)

    def on_body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        response.received(data)

    def on_message_complete(self) -> None:
        if 100 <= self._code < 200:
            self._reset()
            self._answering = True
            return
        self._keep_alive = (self._parser.should_keep_alive()
                            and self._parser.get_http_version() == "1.1")
        self._complete = True

    # -- Protocol --

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            # Nothing was asked: a target that talks out of turn is not trusted again.
            self.abort()
            return
        answered = self._headers_done
        self._feed(data, lambda reason: BadResponse(
            f"malformed response from the target: {reason}"))
        if not self._headers_done and self._head_size > self._pool.max_head:
            self._error = self._error or BadResponse(
                f"response head exceeds {self._pool.max_head} bytes")
        response = self._response
        if self._error is not None:
            self._fail(Failure(ResponseFailed([Failure(self._error)])))
            return
        if self._complete:
            self._end(exchange)
        if response is not None and not answered and not exchange.deferred.called:
            exchange.deferred.callback(response)

    def _end(self, exchange: _Exchange) -> None:
        """The whole response has arrived: the connection serves another scrape or closes."""
        response = self._response
        assert response is not None
        self._exchange = None
        exchange.connection = None
        self.resume()
        if self._keep_alive and not self._stray and not self._lost and not self._until_close:
            self._pool._give_back(self)
        else:
            self.close()
        response.finished()

    def _fail(self, reason: Failure) -> None:
        """Fail the scrape (before its head) or its body (after), and drop the connection."""
        exchange, response = self._exchange, self._response
        self._exchange = None
        self.abort()
        if exchange is None:
            return
        exchange.connection = None
        if not exchange.deferred.called:
            exchange.deferred.errback(reason)
        elif response is not None:
            response.failed(reason)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._gone(reason)
        exchange = self._exchange
        if exchange is None:
            return
        self._exchange = None
        exchange.connection = None
        response = self._response
        if self._headers_done and response is not None:
            if not exchange.deferred.called:
                exchange.deferred.callback(response)
            if self._until_close:
                # The body's end is the connection's end.
                response.finished()
            else:
                response.failed(Failure(ResponseFailed([reason])))
            return
        if exchange.deferred.called:
            return
        if not self._answering:
            if (self._reused and not exchange.retried
                    and reason.check(ConnectionDone, ConnectionLost) is not None):
                # The target closed this idle connection as the request went out.
                exchange.retried = True
                self._pool._send(exchange, fresh=True)
                return
            exchange.deferred.errback(ResponseNeverReceived([reason]))
            return
        exchange.deferred.errback(ResponseFailed([reason]))

class _AgentResponse:
    """An ``Agent`` response (an ``https://`` target, a ``HEAD`` scrape) as the push needs it."""

    def __init__(self, response: IResponse) -> None:
        self._response = response
        self.code: int = response.code
        self.phrase: bytes = response.phrase
        self.headers: list[tuple[bytes, bytes]] = [(name, value)
                        for name, values in response.headers.getAllRawHeaders()
                        for value in values]
        length = response.length
        self.body_length = None if length is UNKNOWN_LENGTH else int(cast(int, length))
        self._body: PushBody | None = None

    def push_body(self, head: bytes) -> IBodyProducer:
        """The push body: ``head``, then the response's body as it arrives."""
        self._body = PushBody(head, self._response)
        return self._body

    def discard(self) -> None:
        """The body will not be read: drop the target's connection if it still runs."""
        if self._body is not None:
            self._body.stopProducing()


class _BodyRelay(Protocol):
    """
    Writes an ``Agent`` response's body into a push request while it arrives.

    The push's head goes with the body's first bytes (or alone at its end, when the
    body is empty): one write, so that the request leaves in one packet.
    """

    def __init__(self, consumer: IConsumer, done: Deferred[None], head: bytes) -> None:
        self._consumer = consumer
        self._done = done
        self._head = head

    def dataReceived(self, data: bytes) -> None:
        if self._head:
            data = self._head + data
            self._head = b""
        self._consumer.write(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            if self._head:
                self._consumer.write(self._head)
                self._head = b""
            self._done.callback(None)
        else:
            self._done.errback(reason)


@implementer(IBodyProducer)
class PushBody:
    """
    A push body: the serialized response head, then an ``Agent`` response's body streamed.

    The push connection's transport pauses and resumes this producer when the
    proxy reads slowly; that pauses and resumes the target's connection in turn,
    so the client holds no more than a socket buffer of the page.
    """

    def __init__(self, head: bytes, response: IResponse) -> None:
        self._head = head
        self._response = response
        self._relay: _BodyRelay | None = None
        body_length = response.length
        self.length: int | object = (
            UNKNOWN_LENGTH if body_length is UNKNOWN_LENGTH else len(head) + int(body_length)
        )

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Write the head, then relay the body."""
        done: Deferred[None] = Deferred()
        self._relay = _BodyRelay(consumer, done, self._head)
        self._response.deliverBody(self._relay)
        return done

    def _target(self) -> Any:
        return None if self._relay is None else self._relay.transport

    def pauseProducing(self) -> None:
        """Stop reading from the target while the proxy catches up."""
        target = self._target()
        if target is not None:
            target.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the target again."""
        target = self._target()
        if target is not None:
            target.resumeProducing()

    def stopProducing(self) -> None:
        """The push was cancelled: drop the target's connection with it."""
        target = self._target()
        if target is not None:
            target.stopProducing()
