"""
Tests for L{pushprox.client.target_link}: the client's scrapes of plain-HTTP targets.

Each test runs a L{TargetLink} on the real reactor against a scripted target on a real
socket of 127.0.0.1: the target reads each request's head and answers it as the test
says (Content-Length, chunked, close-delimited, HTTP/1.0, ``Connection: close``,
slowly, with a head that never ends, reset in the middle of the body), and counts the
connections it was given.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any, cast

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from zope.interface import implementer

from pushprox.client.service import CachedEndpoints, describe_failure
from pushprox.client.target_link import (
    MAX_HELD,
    BadResponse,
    ScrapedResponse,
    TargetLink,
)

pytestmark = pytest.mark.processes

reactor: Any = global_reactor
_CLOSED = Failure(ConnectionDone())
PAGE = b"".join(b'series{n="%d"} %d\n' % (i, i) for i in range(100))
#: Answers a request: the target's connection and the request's number (from 0).
Script = Callable[["_Target", int], None]


class _Target(Protocol):
    """A target's side of one connection: reads request heads, answers as scripted."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self._buffer = b""
        self.lost = Deferred[None]()

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            self.server.requests.append(head)
            self.server.script(self, len(self.server.requests) - 1)

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client."""
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        self.lost.callback(None)


class _Server(ServerFactory):
    """A scripted target: its connections and the request heads it read."""

    noisy = False

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[_Target] = []
        self.requests: list[bytes] = []

    def buildProtocol(self, addr: Any) -> _Target:
        return _Target(self)


@implementer(IConsumer)
class _Collector:
    """A push's side of a body: keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Unused: the push registers the producer with its transport."""

    def unregisterProducer(self) -> None:
        """Unused."""

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def data(self) -> bytes:
        return b"".join(self.writes)


def ok(body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    """A response with Content-Length and ``headers``."""
    extra = b"".join(header + b"\r\n" for header in headers)
    return (b"HTTP/%s 200 OK\r\nContent-Type: text/plain\r\n%sContent-Length: %d\r\n\r\n%s"
            % (version, extra, len(body), body))


def chunked(body: bytes, pieces: int = 3) -> bytes:
    """A chunked response of ``body`` in ``pieces`` chunks."""
    size = -(-len(body) // pieces)
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n" + framed + b"0\r\n\r\n")


class TargetLinkTests(TestCase):
    """Scrapes of a real target on 127.0.0.1 through a TargetLink."""

    timeout = 20

    def serve(self, script: Script) -> _Server:
        """Start a scripted target; ``self.link`` scrapes it."""
        server = _Server(script)
        port: IListeningPort = IReactorTCP(reactor).listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port: int = cast(Any, port.getHost()).port
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        endpoints = CachedEndpoints(reactor, None)
        self.link = TargetLink(endpoints.endpoint,
                               Agent.usingEndpointFactory(reactor, endpoints, pool=pool))
        self.addCleanup(self.link.close)
        self.addCleanup(self.drop_connections, server)
        return server

    def drop_connections(self, server: _Server) -> Deferred[Any]:
        waits = []
        for connection in server.connections:
            if connection.transport is not None:
                connection.transport.loseConnection()
            waits.append(connection.lost)
        return DeferredList(waits)

    def get(self, method: bytes = b"GET", path: bytes = b"/metrics",
            headers: tuple[tuple[bytes, bytes], ...] = ((b"Accept-Encoding", b"gzip"),)
            ) -> Deferred[ScrapedResponse]:
        return self.link.get(scheme=b"http", method=method,
                             url=b"http://127.0.0.1:%d%s" % (self.port, path),
                             host=b"127.0.0.1", port=self.port, path=path,
                             host_header=b"node1.example:9100", headers=headers)

    async def scrape(self, **kwargs: Any) -> tuple[ScrapedResponse, bytes]:
        """A whole scrape: the response and the push body it makes after a head."""
        response = await self.get(**kwargs)
        collector = _Collector()
        await response.push_body(b"HEAD|").startProducing(collector)
        return response, collector.data()

    async def settle(self) -> None:
        """Let closes and reconnections the link started reach both ends."""
        await deferLater(IReactorTime(reactor), 0.05, lambda: None)

    async def test_content_length_page_streams_and_the_connection_is_reused(self) -> None:
        """A Content-Length response: head, headers as sent (gzip untouched), body after
        the push's head; the next scrape goes on the same connection."""
        page = gzip.compress(PAGE, mtime=0)
        server = self.serve(lambda target, n: target.write(
            ok(page, b"Content-Encoding: gzip", b"X-Exporter: a", b"X-Exporter: b")))
        response, pushed = await self.scrape()
        self.assertEqual((response.code, response.phrase, response.body_length),
                         (200, b"OK", len(page)))
        self.assertEqual(response.headers, [
            (b"Content-Type", b"text/plain"), (b"Content-Encoding", b"gzip"),
            (b"X-Exporter", b"a"), (b"X-Exporter", b"b"),
            (b"Content-Length", str(len(page)).encode())])
        self.assertEqual(pushed, b"HEAD|" + page)
        _, again = await self.scrape()
        self.assertEqual(again, b"HEAD|" + page)
        self.assertEqual(len(server.connections), 1)
        self.assertEqual(server.requests[0], b"GET /metrics HTTP/1.1\r\n"
                         b"Host: node1.example:9100\r\nAccept-Encoding: gzip")
        self.assertEqual(self.link.idle_connections(), 1)

    async def test_push_body_length_is_the_head_and_the_content_length(self) -> None:
        """With Content-Length the push is framed by length; chunked, it is not."""
        self.serve(lambda target, n: target.write(ok(PAGE) if n == 0 else chunked(PAGE)))
        response = await self.get()
        self.assertEqual(response.push_body(b"HEAD|").length, 5 + len(PAGE))
        await response.push_body(b"HEAD|").startProducing(_Collector())
        response, pushed = await self.scrape()
        self.assertIsNone(response.body_length)
        self.assertEqual(pushed, b"HEAD|" + PAGE)

    async def test_chunked_page_is_unframed_and_the_connection_is_reused(self) -> None:
        """A chunked body arrives without its framing; the connection serves again."""
        server = self.serve(lambda target, n: target.write(chunked(PAGE, pieces=7)))
        for _ in range(3):
            _, pushed = await self.scrape()
            self.assertEqual(pushed, b"HEAD|" + PAGE)
        self.assertEqual(len(server.connections), 1)

    async def test_close_delimited_page_ends_at_the_close_and_is_not_reused(self) -> None:
        """A body without length or chunking runs to the close; the next scrape opens a
        new connection."""

        def answer(target: _Target, n: int) -> None:
            target.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PAGE)
            assert target.transport is not None
            target.transport.loseConnection()

        server = self.serve(answer)
        for _ in range(2):
            response, pushed = await self.scrape()
            self.assertEqual((response.code, response.body_length), (200, None))
            self.assertEqual(pushed, b"HEAD|" + PAGE)
        self.assertEqual(len(server.connections), 2)

    async def test_http_10_answer_is_not_reused(self) -> None:
        """An HTTP/1.0 answer, even with Keep-Alive, ends its connection's use."""
        server = self.serve(lambda target, n: target.write(
            ok(PAGE, b"Connection: keep-alive", version=b"1.0")))
        for _ in range(2):
            _, pushed = await self.scrape()
            self.assertEqual(pushed, b"HEAD|" + PAGE)
        await self.settle()
        self.assertEqual(len(server.connections), 2)
        self.assertEqual(self.link.idle_connections(), 0)

    async def test_connection_close_answer_is_not_reused(self) -> None:
        """``Connection: close`` ends the connection's use."""
        server = self.serve(lambda target, n: target.write(ok(PAGE, b"Connection: close")))
        for _ in range(2):
            _, pushed = await self.scrape()
            self.assertEqual(pushed, b"HEAD|" + PAGE)
        self.assertEqual(len(server.connections), 2)

    async def test_idle_connection_closed_under_a_scrape_is_retried_once(self) -> None:
        """The target closes a reused connection as the next request goes out: the
        scrape is sent once more on a new connection and succeeds."""

        def answer(target: _Target, n: int) -> None:
            if n == 1:
                assert target.transport is not None
                target.transport.loseConnection()
            else:
                target.write(ok(PAGE))

        server = self.serve(answer)
        await self.scrape()
        _, pushed = await self.scrape()
        self.assertEqual(pushed, b"HEAD|" + PAGE)
        self.assertEqual(len(server.connections), 2)
        self.assertEqual(len(server.requests), 3)

    async def test_fresh_connection_closed_before_an_answer_fails_unretried(self) -> None:
        """A new connection closed without an answer is not retried: the scrape fails
        with the reason Agent gives."""

        def answer(target: _Target, n: int) -> None:
            assert target.transport is not None
            target.transport.loseConnection()

        server = self.serve(answer)
        failure = await self.failure_of(self.get())
        self.assertEqual(describe_failure(failure),
                         "ConnectionDone: Connection was closed cleanly.")
        self.assertEqual(len(server.connections), 1)

    async def failure_of(self, waiting: Deferred[Any]) -> Failure:
        try:
            await waiting
        except Exception:
            return Failure()
        raise AssertionError("no failure")

    async def test_reset_mid_body_fails_the_push_body(self) -> None:
        """A connection reset after part of a Content-Length body fails the body."""

        def answer(target: _Target, n: int) -> None:
            target.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + PAGE)
            assert target.transport is not None
            reactor.callLater(0.05, cast(ITCPTransport, target.transport).abortConnection)

        self.serve(answer)
        response = await self.get()
        collector = _Collector()
        failure = await self.failure_of(response.push_body(b"HEAD|").startProducing(collector))
        self.assertTrue(failure.check(ResponseFailed))
        self.assertEqual(collector.data(), b"HEAD|" + PAGE)
        self.assertEqual(self.link.idle_connections(), 0)

    async def test_chunked_body_cut_short_fails_the_push_body(self) -> None:
        """A chunked body whose connection closes before the last chunk fails."""

        def answer(target: _Target, n: int) -> None:
            target.write(chunked(PAGE)[:-5])
            assert target.transport is not None
            target.transport.loseConnection()

        self.serve(answer)
        response = await self.get()
        failure = await self.failure_of(response.push_body(b"").startProducing(_Collector()))
        self.assertTrue(failure.check(ResponseFailed))

    async def test_slow_target_cancelled_drops_the_connection(self) -> None:
        """A target that does not answer: cancelling the scrape (its timeout) fails it
        with CancelledError and closes the connection at once."""
        server = self.serve(lambda target, n: None)
        waiting = self.get()
        while not server.requests:
            await self.settle()
        waiting.cancel()
        failure = await self.failure_of(waiting)
        self.assertTrue(failure.check(CancelledError))
        await server.connections[0].lost
        self.assertEqual(self.link.idle_connections(), 0)

    async def test_head_without_end_fails_at_the_limit(self) -> None:
        """Header lines that never end fail the scrape once the head passes the limit."""

        def answer(target: _Target, n: int) -> None:
            target.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(2000):
                target.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100))

        self.serve(answer)
        failure = await self.failure_of(self.get())
        self.assertTrue(failure.check(ResponseFailed))
        self.assertEqual(describe_failure(failure),
                         "BadResponse: response head exceeds 65536 bytes")

    async def test_malformed_answer_fails_with_a_clear_reason(self) -> None:
        """Something other than HTTP fails the scrape, naming the target."""
        self.serve(lambda target, n: target.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
        failure = await self.failure_of(self.get())
        self.assertTrue(failure.check(ResponseFailed))
        self.assertIn("BadResponse: malformed response from the target:",
                      describe_failure(failure))
        self.assertIsInstance(cast(ResponseFailed, failure.value).reasons[0].value, BadResponse)

    async def test_big_page_unread_is_held_only_up_to_the_limit(self) -> None:
        """A page larger than the limit, not yet read by the push, pauses the target's
        connection: the push's first write holds at most the limit and one read."""
        big = b"z" * (8 * 1024 * 1024)
        self.serve(lambda target, n: target.write(ok(big)))
        response = await self.get()
        await deferLater(IReactorTime(reactor), 0.3, lambda: None)
        collector = _Collector()
        done = response.push_body(b"HEAD|").startProducing(collector)
        self.assertLessEqual(len(collector.writes[0]), 5 + MAX_HELD + 65536)
        await done
        self.assertEqual(collector.data(), b"HEAD|" + big)

    async def test_push_full_at_its_first_write_keeps_the_target_paused(self) -> None:
        """A push whose transport is full with the held bytes pauses the body as it
        starts: the target stays paused until the push resumes it."""
        big = b"z" * (8 * 1024 * 1024)
        self.serve(lambda target, n: target.write(ok(big)))
        response = await self.get()
        await deferLater(IReactorTime(reactor), 0.3, lambda: None)
        body = response.push_body(b"HEAD|")

        class Full(_Collector):
            def write(self, data: bytes) -> None:
                super().write(data)
                if len(self.writes) == 1:
                    body.pauseProducing()

        collector = Full()
        done = body.startProducing(collector)
        await deferLater(IReactorTime(reactor), 0.2, lambda: None)
        self.assertEqual(len(collector.writes), 1)
        body.resumeProducing()
        await done
        self.assertEqual(collector.data(), b"HEAD|" + big)

    async def test_paused_push_pauses_the_target(self) -> None:
        """While the push is paused nothing more is read; resumed, the page completes."""
        big = b"z" * (8 * 1024 * 1024)
        self.serve(lambda target, n: target.write(ok(big)))
        response = await self.get()
        collector = _Collector()
        body = response.push_body(b"")
        done = body.startProducing(collector)
        body.pauseProducing()
        await self.settle()
        seen = len(collector.data())
        await deferLater(IReactorTime(reactor), 0.2, lambda: None)
        self.assertEqual(len(collector.data()), seen)
        self.assertLess(seen, len(big))
        body.resumeProducing()
        await done
        self.assertEqual(len(collector.data()), len(big))

    async def test_discarded_body_drops_the_connection(self) -> None:
        """A body the push will not read (it failed first) closes the target's
        connection rather than leaving it to nobody."""
        big = b"z" * (8 * 1024 * 1024)
        server = self.serve(lambda target, n: target.write(ok(big)))
        response = await self.get()
        response.discard()
        await server.connections[0].lost
        self.assertEqual(self.link.idle_connections(), 0)

    async def test_head_scrape_goes_through_the_agent(self) -> None:
        """A HEAD scrape is sent by the Agent: the response has no body to wait for."""
        server = self.serve(lambda target, n: target.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"))
        response, pushed = await self.scrape(method=b"HEAD")
        self.assertEqual((response.code, pushed), (200, b"HEAD|"))
        self.assertTrue(server.requests[0].startswith(b"HEAD /metrics HTTP/1.1\r\n"))

    async def test_interim_answer_is_skipped(self) -> None:
        """A ``100 Continue`` before the answer is not taken for it."""
        self.serve(lambda target, n: target.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(PAGE)))
        response, pushed = await self.scrape()
        self.assertEqual((response.code, pushed), (200, b"HEAD|" + PAGE))
