# -*- test-case-name: tests.test_client_names -*-
"""
The names one client registers with the proxy, and the address each is scraped at.

``--fqdn NAME[=ADDRESS]`` (repeatable) gives them: Prometheus scrapes ``NAME`` through the
proxy, the client connects to ``ADDRESS`` (an IP address or a host name), or to ``NAME``
itself when no address is given.  Pure functions of strings: no I/O, no Twisted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pushprox.shared import wire
from pushprox.shared.options import host_name

_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_-]+)*\.?")


@dataclass(frozen=True)
class ClientName:
    """One name the client registers, and where its scrapes go."""

    fqdn: str
    #: The address to connect to instead of ``fqdn``; None for ``fqdn`` itself.
    address: str | None = None

    def __str__(self) -> str:
        return self.fqdn if self.address is None else f"{self.fqdn}={self.address}"


def parse_client_name(value: str) -> ClientName:
    """A ``ClientName`` from ``NAME`` or ``NAME=ADDRESS``; ``ValueError`` says what is wrong."""
    name, equals, address = (part.strip() for part in value.partition("="))
    if not name:
        raise ValueError("the name is empty")
    host_name(name)
    if wire.normalize_fqdn(name.encode("utf-8")) is None:
        raise ValueError("not a host name (letters, digits, '-', '_' and dots)")
    if not equals:
        return ClientName(name)
    if not _is_address(address):
        raise ValueError(f"the address {address} is not an IP address or a host name")
    return ClientName(name, address)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None


def check_unique(names: Iterable[ClientName]) -> None:
    """Raise ``ValueError`` naming a name given twice (the proxy would see one client)."""
    seen: set[str] = set()
    for name in names:
        key = wire.normalize_fqdn(name.fqdn.encode("utf-8")) or name.fqdn
        if key in seen:
            raise ValueError(f"{name.fqdn} is given twice")
        seen.add(key)


def parse_targets(text: str) -> list[ClientName]:
    """
    The names of a targets file: one ``NAME[=ADDRESS]`` a line; blank lines and ``#``
    comments (whole lines or after an entry) are skipped.  ``ValueError`` names the first
    bad line, or a name given twice.
    """
    names: list[ClientName] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        try:
            names.append(parse_client_name(entry))
        except ValueError as error:
            raise ValueError(f"line {number}: {entry}: {error}") from None
    check_unique(names)
    return names
