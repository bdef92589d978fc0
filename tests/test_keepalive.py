"""Tests for L{pushprox.shared.keepalive}: the keepalive timing reaches the TCP socket."""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.interfaces import ISystemHandle, ITCPTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from pushprox.shared.config import ClientConfig, ProxyConfig
from pushprox.shared.keepalive import enable_keepalive, keepalive_options, tcp_transport


class RecordingSocket:
    """A socket handle that notes the options set on it."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        """Note the option."""
        self.options[(level, option)] = value


class FakeTCPTransport:
    """Just enough of a TCP transport: keepalive switch and handle."""

    def __init__(self) -> None:
        # Declared on the instance: it implements only what keepalive uses.
        alsoProvides(self, ITCPTransport, ISystemHandle)
        self.keepalive: bool | None = None
        self.handle = RecordingSocket()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Note the switch."""
        self.keepalive = enabled

    def getHandle(self) -> RecordingSocket:
        """The recording socket."""
        return self.handle


class FakeTLSTransport:
    """A TLS layer that says it is TCP too, over a real TCP transport."""

    def __init__(self, transport: Any) -> None:
        alsoProvides(self, ITCPTransport)
        self.transport = transport

    def getHandle(self) -> object:
        """Not a socket (pyOpenSSL's Connection, in Twisted)."""
        return object()


class KeepAliveTests(SynchronousTestCase):
    """enable_keepalive sets the switch and the timing on the TCP socket."""

    def test_default_timing_on_linux(self) -> None:
        """Idle 15 s, probes every 5 s, 3 of them, unacknowledged data bounded by 30 s."""
        if not sys.platform.startswith("linux"):
            self.skipTest("TCP_KEEPIDLE and TCP_USER_TIMEOUT are Linux options")
        self.assertEqual(keepalive_options(ProxyConfig()), [
            (socket.TCP_KEEPIDLE, 15), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 3),
            (socket.TCP_USER_TIMEOUT, 30_000),
        ])

    def test_configured_timing_reaches_the_socket(self) -> None:
        """The client's configured values are set at level IPPROTO_TCP."""
        transport = FakeTCPTransport()
        config = ClientConfig("http://proxy/", "node1.example", tcp_keepalive_idle=7.0,
                              tcp_keepalive_interval=2.0, tcp_keepalive_count=4)
        self.assertTrue(enable_keepalive(transport, config))
        self.assertIs(transport.keepalive, True)
        expected = {(socket.IPPROTO_TCP, option): value
                    for option, value in keepalive_options(config)}
        self.assertEqual(transport.handle.options, expected)
        if sys.platform.startswith("linux"):
            self.assertEqual(expected[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)], 7)
            self.assertEqual(expected[(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)], 15_000)

    def test_tls_reaches_the_tcp_connection_under_it(self) -> None:
        """Under TLS, the options go to the TCP transport's socket."""
        tcp = FakeTCPTransport()
        self.assertIs(tcp_transport(FakeTLSTransport(tcp)), tcp)
        self.assertTrue(enable_keepalive(FakeTLSTransport(tcp), ProxyConfig()))
        self.assertIs(tcp.keepalive, True)

    def test_transport_without_a_socket_gets_only_the_switch(self) -> None:
        """An in-memory TCP transport (no system handle) is switched on, not timed."""
        tcp = FakeTCPTransport()
        transport = FakeTLSTransport(None)
        transport.setTcpKeepAlive = tcp.setTcpKeepAlive  # type: ignore[attr-defined]
        self.assertFalse(enable_keepalive(transport, ProxyConfig()))
        self.assertIs(tcp.keepalive, True)

    def test_no_tcp_no_keepalive(self) -> None:
        """A UNIX socket's transport (no TCP under it) is left alone."""
        self.assertIsNone(tcp_transport(object()))
        self.assertFalse(enable_keepalive(object(), ProxyConfig()))
        self.assertFalse(enable_keepalive(None, ProxyConfig()))
