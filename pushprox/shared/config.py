# -*- test-case-name: tests.test_taps -*-
"""
The settings of both programs, with their documented defaults, in one place each.

``ProxyConfig`` and ``ClientConfig`` are what the rest of the code reads.  A field
made with ``option()`` is also a command-line option: its flag (the field's name in
kebab case unless given), help text, default and parser are all here, and the twistd
options of both programs are generated from them (``pushprox.shared.options``).  Standard
library only, so that the client's import graph stays lean.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pushprox.shared.options import naming, positive_int, seconds, target_address


def option(default: Any, help: str, *, flag: str | None = None,
           parse: Callable[[str], Any] | None = None) -> Any:
    """A config field that is also a command-line option (see the module docstring);
    ``parse`` reads its value instead of the parser of its type."""
    return field(default=default, metadata={"help": help, "flag": flag, "parse": parse})


#: How an option's value is read, by the type of its field: durations (a number of
#: seconds or Go's ``1m30s``) and counts are positive; a string is taken as it is.
_PARSERS: dict[str, Callable[[str], Any] | None] = {
    "float": seconds,
    "int": positive_int,
    "str | None": None,
}


@dataclass(frozen=True, kw_only=True)
class KeepAliveConfig:
    """
    TCP keepalive on the connections between clients and the proxy, set on both sides.

    It is how a silently dead connection (a NAT or firewall that forgot it, a peer
    that vanished) is noticed while nothing is being sent: after ``tcp_keepalive_idle``
    seconds of quiet, a probe every ``tcp_keepalive_interval`` seconds, and the
    connection is dropped after ``tcp_keepalive_count`` unanswered ones.
    """

    tcp_keepalive_idle: float = option(
        15.0, "Seconds a connection between client and proxy may be idle before TCP "
        "keepalive probes start.")
    tcp_keepalive_interval: float = option(5.0, "Seconds between TCP keepalive probes.")
    tcp_keepalive_count: int = option(
        3, "Unanswered TCP keepalive probes after which a connection is dropped.")


@dataclass(frozen=True)
class ProxyConfig(KeepAliveConfig):
    """Timeouts and limits of the proxy; the defaults are the documented ones."""

    scrape_default_timeout: float = option(
        15.0, "Scrape timeout in seconds when Prometheus sends none.")
    scrape_max_timeout: float = option(
        300.0, "Largest scrape timeout in seconds; longer ones are cut to it.")
    registration_timeout: float = option(
        300.0, "Seconds after its last poll that a client stays registered.")
    client_silence_timeout: float = option(
        10.0, "Seconds a registered client may hold no poll before it is taken for "
        "unreachable: scrapes of it then fail at once with 503 instead of waiting for "
        "their timeout.")
    poll_max_timeout: float = option(
        300.0, "Longest time in seconds that the proxy holds an idle poll when a client "
        "asks for a bounded poll.")
    max_push_size: int = option(
        64 * 1024 * 1024, "Largest push body (a target's whole response) in bytes.")
    max_request_size: int = option(64 * 1024, "Largest body of any other request in bytes.")
    max_header_size: int = option(
        16 * 1024, "Largest request line plus headers of a request in bytes.")
    max_queued_per_client: int = option(
        100, "Scrapes queued per client while it has no poll waiting.",
        flag="max-queued-scrapes")
    max_clients: int = option(100_000, "Registered clients.")
    max_polls_per_client: int = option(16, "Polls one FQDN may hold open at once.")
    log_scrapes: bool = option(False, "Log one line per proxied scrape (default: only errors).")
    shutdown_grace: float = option(
        15.0, "Seconds a stopping replica (cluster mode) waits for its scrapes in flight.")
    #: Largest status line plus headers of a pushed response, in bytes.
    max_push_head_size: int = 64 * 1024


@dataclass(frozen=True)
class ClientConfig(KeepAliveConfig):
    """What the client needs to know; the defaults are the documented ones."""

    proxy_url: str
    fqdn: str
    target_host: str | None = option(
        None, "Address to connect to for scrapes instead of the FQDN, e.g. 127.0.0.1 "
        "(the Host header keeps the FQDN).", parse=target_address)
    retry_initial_wait: float = option(1.0, "First wait in seconds after a failed poll.")
    retry_max_wait: float = option(5.0, "Longest wait in seconds between failed polls.")
    poll_timeout: float = option(
        25.0, "Seconds after which a pushprox proxy answers an idle poll so that load "
        "balancers and NAT do not cut it.")
    poll_grace: float = option(
        10.0, "Seconds past --poll-timeout that a poll of a pushprox proxy may stay "
        "unanswered before the client takes its connection for dead (a NAT or firewall "
        "forgot it) and polls on a new one.")
    scrape_default_timeout: float = option(
        15.0, "Scrape timeout in seconds when the request carries none.")
    max_concurrent_scrapes: int = option(64, "Scrapes run at once; more are refused.")
    shutdown_grace: float = option(
        5.0, "Seconds that running scrapes get to finish when the client stops.")
    allow_any: bool = option(
        False, "Scrape any port and path of this FQDN, as upstream PushProx does "
        "(default: only --allow-port and --allow-path).")
    log_scrapes: bool = option(False, "Log one line per scrape (default: only errors).")
    proxy_failback_after: float = option(
        60.0, "Seconds a client polls another --proxy-url than the first before it tries "
        "the first again.")
    #: Every proxy URL in order of preference (``proxy_url`` first); empty for just it.
    proxy_urls: tuple[str, ...] = ()
    allow_ports: frozenset[int] = field(default_factory=lambda: frozenset({9100}))
    allow_paths: frozenset[str] = field(default_factory=lambda: frozenset({"/metrics"}))
    #: Sent to the proxy as a Bearer token (its --client-tokens).
    proxy_token: str | None = None
    #: Sent to targets as a Bearer token, never to the proxy.
    target_bearer_token: str | None = None
    #: Labels the proxy lists this client with in /clients (a pushprox extension).
    labels: tuple[tuple[str, str], ...] = ()

    def endpoint(self, name: str, url: str | None = None) -> bytes:
        """The URL of the proxy's endpoint ``name``, credentials removed (of ``url``, one
        of ``proxy_urls``, or of ``proxy_url``)."""
        parts = urlsplit(url or self.proxy_url)
        netloc = parts.netloc.rpartition("@")[2]
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return urlunsplit((parts.scheme, netloc, path + name, "", "")).encode("ascii")

    def proxy_authorization(self, url: str | None = None) -> bytes | None:
        """The ``Authorization`` value for the proxy: the token, or the credentials of
        ``url`` (one of ``proxy_urls``, or ``proxy_url``)."""
        if self.proxy_token:
            return b"Bearer " + self.proxy_token.encode("utf-8")
        parts = urlsplit(url or self.proxy_url)
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


def option_fields(config_class: type[Any]) -> list[tuple[str, dataclasses.Field[Any]]]:
    """The fields of a config class that are options, with their flags."""
    return [
        (item.metadata["flag"] or item.name.replace("_", "-"), item)
        for item in dataclasses.fields(config_class)
        if "help" in item.metadata
    ]


def twistd_flags(config_class: type[Any]) -> list[list[Any]]:
    """``usage.Options.optFlags`` rows for the boolean options of a config class."""
    return [[flag, None, item.metadata["help"]]
            for flag, item in option_fields(config_class) if item.type in ("bool", bool)]


def twistd_parameters(config_class: type[Any]) -> list[list[Any]]:
    """``usage.Options.optParameters`` rows for the other options of a config class."""
    rows: list[list[Any]] = []
    for flag, item in option_fields(config_class):
        if item.type in ("bool", bool):
            continue
        parser = item.metadata["parse"] or _PARSERS[str(item.type)]
        rows.append([flag, None, item.default, item.metadata["help"],
                     parser and naming(flag, parser)])
    return rows


def option_values(config_class: type[Any], options: Any) -> dict[str, Any]:
    """The config fields set by parsed ``options`` (a ``usage.Options``), by field name."""
    values: dict[str, Any] = {}
    for flag, item in option_fields(config_class):
        value = options[flag]
        values[item.name] = bool(value) if item.type in ("bool", bool) else value
    return values
