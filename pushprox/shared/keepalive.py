# -*- test-case-name: tests.test_keepalive -*-
"""
TCP keepalive with our timing on a connection between a client and the proxy.

Twisted turns keepalive on (``ITCPTransport.setTcpKeepAlive``) but leaves its timing
to the kernel, whose default waits two hours before the first probe: a connection
that a NAT forgot would hold a poll, or a client's registration, for that long.  The
timing is set on the socket (``ISystemHandle.getHandle``) where the platform has the
options (Linux has all four; others keep what they lack at the kernel's default).
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.interfaces import ISystemHandle, ITCPTransport
from twisted.logger import Logger

from pushprox.shared.config import KeepAliveConfig

log = Logger()


def tcp_transport(transport: object) -> ITCPTransport | None:
    """The TCP connection under ``transport`` (TLS wraps one), or None (a UNIX socket)."""
    # A TLS transport says it is a TCP one too, but its handle is not the socket:
    # the deepest transport that is TCP is.
    found: ITCPTransport | None = None
    for _ in range(4):
        if transport is None:
            break
        if ITCPTransport.providedBy(transport):
            found = transport
        transport = getattr(transport, "transport", None)
    return found


def keepalive_options(config: KeepAliveConfig) -> list[tuple[int, int]]:
    """The (option, value) pairs of level ``IPPROTO_TCP`` this platform has."""
    wanted = [
        ("TCP_KEEPIDLE", round(config.tcp_keepalive_idle)),
        ("TCP_KEEPINTVL", round(config.tcp_keepalive_interval)),
        ("TCP_KEEPCNT", config.tcp_keepalive_count),
        # Data sent into a dead link is retransmitted for ~15 minutes unless this
        # bounds it too (a poll answered after the link died, say).
        ("TCP_USER_TIMEOUT", round(1000 * (config.tcp_keepalive_idle
                                          + config.tcp_keepalive_interval
                                          * config.tcp_keepalive_count))),
    ]
    return [(getattr(socket, name), max(value, 1)) for name, value in wanted
            if hasattr(socket, name)]


def enable_keepalive(transport: object, config: KeepAliveConfig) -> bool:
    """Turn keepalive on with ``config``'s timing; False when there is no TCP under it."""
    tcp = tcp_transport(transport)
    if tcp is None:
        return False
    try:
        tcp.setTcpKeepAlive(True)
        if not ISystemHandle.providedBy(tcp):
            return False  # an in-memory transport: no socket to time
        handle = cast(socket.socket, ISystemHandle(tcp).getHandle())
        for option, value in keepalive_options(config):
            handle.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as error:
        # The peer may already be gone; the connection's own error will say so.
        log.debug("Could not set TCP keepalive: {error}", error=error)
        return False
    return True
