# -*- test-case-name: tests.test_taps -*-
"""
The settings of both programs, with their documented defaults, in one place each.

``ProxyConfig`` and ``ClientConfig`` are what the rest of the code reads; the twistd
options of both programs take their defaults from here.  Standard library only, so
that the client's import graph stays lean.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit


@dataclass(frozen=True)
class ProxyConfig:
    """Timeouts and limits of the proxy; the defaults are the documented ones."""

    scrape_default_timeout: float = 15.0
    scrape_max_timeout: float = 300.0
    poll_max_timeout: float = 300.0
    #: Seconds after its last poll that a client stays registered.
    registration_timeout: float = 300.0
    #: Scrapes queued per client while it has no poll waiting.
    max_queued_per_client: int = 100
    max_clients: int = 100_000
    #: Polls one FQDN may hold open at once.
    max_polls_per_client: int = 16
    #: Largest push body (the target's whole response), in bytes.
    max_push_size: int = 64 * 1024 * 1024
    #: Largest body of any other request (a poll carries an FQDN), in bytes.
    max_request_size: int = 64 * 1024
    #: Largest status line plus headers of a pushed response, in bytes.
    max_push_head_size: int = 64 * 1024
    #: Largest request line plus headers of any request to the proxy, in bytes.
    max_header_size: int = 16 * 1024
    log_scrapes: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """What the client needs to know; the defaults are the documented ones."""

    proxy_url: str
    fqdn: str
    poll_timeout: float = 25.0
    #: How long after poll_timeout a poll of a pushprox proxy may stay unanswered
    #: before the client takes its connection for dead.
    poll_grace: float = 10.0
    retry_initial_wait: float = 1.0
    retry_max_wait: float = 5.0
    scrape_default_timeout: float = 15.0
    allow_ports: frozenset[int] = field(default_factory=lambda: frozenset({9100}))
    allow_paths: frozenset[str] = field(default_factory=lambda: frozenset({"/metrics"}))
    allow_any: bool = False
    #: Connect to this address instead of the FQDN (the Host header keeps the FQDN).
    target_host: str | None = None
    max_concurrent_scrapes: int = 64
    shutdown_grace: float = 5.0
    log_scrapes: bool = False
    #: Sent to the proxy as a Bearer token (its --client-tokens).
    proxy_token: str | None = None
    #: Sent to targets as a Bearer token, never to the proxy.
    target_bearer_token: str | None = None
    #: Labels the proxy lists this client with in /clients (a pushprox extension).
    labels: tuple[tuple[str, str], ...] = ()

    def endpoint(self, name: str) -> bytes:
        """The URL of the proxy's endpoint ``name``, credentials removed."""
        parts = urlsplit(self.proxy_url)
        netloc = parts.netloc.rpartition("@")[2]
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return urlunsplit((parts.scheme, netloc, path + name, "", "")).encode("ascii")

    def proxy_authorization(self) -> bytes | None:
        """The ``Authorization`` value for the proxy: the token, or URL credentials."""
        if self.proxy_token:
            return b"Bearer " + self.proxy_token.encode("utf-8")
        parts = urlsplit(self.proxy_url)
        if parts.username is None:
            return None
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        return b"Basic " + base64.b64encode(userinfo.encode("utf-8"))


def default(config_class: type[Any], name: str) -> Any:
    """The default of field ``name`` of a config dataclass (for option tables)."""
    for item in dataclasses.fields(config_class):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            break
    raise KeyError(f"{config_class.__name__}.{name} has no default")
