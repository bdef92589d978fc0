# -*- test-case-name: tests.test_options -*-
"""
Parsers of option values shared by both programs (no imports of either side).

Durations and listen addresses are read in our syntax and in the Go PushProx's, so that
a command line written for the upstream binaries means the same here: ``15`` or ``15s``,
``5m``, ``1m30s``, ``250ms``; ``tcp:8080``, ``8080`` or ``:8080``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from twisted.python import usage

#: Seconds per unit of a Go duration (time.ParseDuration's units).
_GO_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
    "s": 1.0, "m": 60.0, "h": 3600.0,
}
_GO_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
#: Endpoint types Twisted parses without a plugin; others are found through plugins.
_BUILTIN_ENDPOINT_TYPES = frozenset({"tcp", "ssl", "unix"})


class OptionValueError(Exception):
    """A value that an option refuses; the message names the option and says why.

    Not a ``ValueError`` on purpose: ``usage.Options`` would replace the message of a
    ``ValueError`` raised by a parser with one that does not name the option.
    """


def positive_float(value: str) -> float:
    """Parse a positive number."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value} is not a positive number")
    return number


def go_duration(value: str) -> float:
    """Seconds in a Go duration (``5m``, ``1m30s``, ``250ms``, ``1.5h``; ``0``)."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    if text[:1] in ("-", "+"):
        text = text[1:]
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(text):
        term = _GO_TERM.match(text, position)
        if term is None:
            raise ValueError(f"{value!r} is not a duration (e.g. 15s, 5m, 1m30s, 250ms)")
        total += float(term.group(1)) * _GO_UNITS[term.group(2)]
        position = term.end()
    if not text:
        raise ValueError("empty duration")
    return sign * total


def seconds(value: str) -> float:
    """Parse a positive duration: a number of seconds (``15``, ``0.5``) or Go's ``15s``."""
    try:
        number = float(value)
    except ValueError:
        number = go_duration(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value} is not a positive duration")
    return number


def non_negative_seconds(value: str) -> float:
    """Parse a duration that may be 0: a number of seconds or Go's ``15s``."""
    if value.strip() in ("0", "0s", "0.0"):
        return 0.0
    return seconds(value)


def tls_min_version(value: str) -> str:
    """Parse the lowest TLS version: TLS12 or TLS13 (exporter-toolkit's names)."""
    from pushprox.tls import tls_version

    return tls_version(value)


def tls_cipher_suites(value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of TLS 1.2 cipher suites by IANA name."""
    from pushprox.tls import cipher_suites

    return cipher_suites(value)


def positive_int(value: str) -> int:
    """Parse a positive integer."""
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


def port_number(value: str) -> int:
    """Parse a TCP port number."""
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError(f"{value} is not a TCP port")
    return number


def read_secret(path: str | None, flag: str) -> str | None:
    """The first line of a secret file, or a usage error naming the flag."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as secret_file:
            secret = secret_file.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise usage.UsageError(f"--{flag}: cannot read {path}: {error}") from None
    if not secret:
        raise usage.UsageError(f"--{flag}: {path} is empty")
    return secret


def _endpoint_types() -> frozenset[str]:
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return _BUILTIN_ENDPOINT_TYPES | {
        parser.prefix for parser in getPlugins(IStreamServerEndpointStringParser)
    }


def listen_endpoint(value: str) -> str:
    """
    A server endpoint description from ours or Go's way of saying where to listen.

    ``8080`` and ``:8080`` (every interface) become ``tcp:8080``; ``127.0.0.1:8080``,
    ``localhost:8080`` and ``[::1]:8080`` listen on that interface only. Anything else is
    taken as a Twisted endpoint description (``tcp:8080:interface=::1``, ``ssl:8443:…``,
    ``unix:/run/pushprox.sock``), so ``tcp:8080`` keeps its meaning.
    """
    if value.isdigit():
        return f"tcp:{port_number(value)}"
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", value)
    if bracketed:
        host, port = bracketed.groups()
        ipaddress.IPv6Address(host)
        return f"tcp6:{port_number(port)}:interface={host.replace(':', chr(92) + ':')}"
    go_form = re.fullmatch(r"([A-Za-z0-9.-]*):(\d+)", value)
    if go_form:
        host, port = go_form.groups()
        if not host:
            return f"tcp:{port_number(port)}"
        if host not in _endpoint_types():
            return f"tcp:{port_number(port)}:interface={host}"
    return value


def optional_listen_endpoint(value: str) -> str:
    """``listen_endpoint``, or the empty string that turns a listener off."""
    return listen_endpoint(value) if value else ""


def naming(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, raising an ``OptionValueError`` that names ``--flag`` and the value."""

    def parse_named(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise OptionValueError(f"--{flag} {value}: {error}") from None

    parse_named.__doc__ = parse.__doc__
    return parse_named
