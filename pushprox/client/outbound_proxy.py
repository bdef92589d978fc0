# -*- test-case-name: tests.test_outbound_proxy -*-
"""
Which HTTP proxy, if any, the client's link to the PushProx proxy goes through.

The rules are those of Go's ``net/http`` (``golang.org/x/net/http/httpproxy``), which the
upstream client follows, so that a site's environment means the same to both:

- ``HTTPS_PROXY`` for an ``https://`` proxy URL, ``HTTP_PROXY`` for an ``http://`` one;
  the upper-case variable wins over the lower-case one.  A value without a scheme is
  taken as ``http://``.
- ``NO_PROXY`` (or ``no_proxy``) lists hosts reached directly: ``*`` for all, an IP
  address, a CIDR block, or a domain name, which matches itself and its subdomains
  (``.example.com`` and ``*.example.com`` only the subdomains); each may end in ``:PORT``.
- ``localhost`` and loopback addresses are always reached directly.

The proxy's own URL must be ``http://`` (a proxy that speaks TLS itself is not
supported); its credentials become a ``Proxy-Authorization: Basic`` header and are never
shown (``HttpProxy.shown``).  Pure functions of strings: no I/O, no Twisted.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

#: The flag that names the HTTP proxy explicitly (used in messages).
FLAG = "http-proxy"


@dataclass(frozen=True)
class HttpProxy:
    """An HTTP proxy to go through: where it listens and the credentials it wants."""

    host: str
    port: int
    #: The ``Proxy-Authorization`` value, from the URL's credentials.
    authorization: bytes | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The proxy's URL as logged: without its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_http_proxy(value: str) -> HttpProxy:
    """An ``HttpProxy`` from a URL such as ``http://user:password@proxy:3128``.

    Raises ``ValueError`` (saying why, without the credentials) for anything else.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL such as http://proxy:3128") from None
    if parts.scheme != "http":
        raise ValueError(f"{parts.scheme}:// proxies are not supported, only http:// "
                         "(https:// URLs of the PushProx proxy go through it with CONNECT)")
    if not parts.hostname:
        raise ValueError("no host in the proxy URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL has no path, e.g. http://proxy:3128")
    authorization = None
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(userinfo.encode("utf-8"))
    return HttpProxy(host=parts.hostname, port=port or 80, authorization=authorization)


@dataclass(frozen=True)
class NoProxy:
    """The hosts that ``NO_PROXY`` sends around the proxy."""

    everything: bool = False
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None], ...] = ()
    #: (domain without leading dot, port or None, subdomains only).
    domains: tuple[tuple[str, int | None, bool], ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        """The rules of a ``NO_PROXY`` value; entries that mean nothing are skipped, as Go does."""
        everything = False
        networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        domains: list[tuple[str, int | None, bool]] = []
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                everything = True
                continue
            try:
                networks.append((ipaddress.ip_network(entry, strict=False), None))
                continue
            except ValueError:
                pass
            host, port = _split_port(entry)
            try:
                networks.append((ipaddress.ip_network(host.strip("[]")), port))
                continue
            except ValueError:
                pass
            subdomains_only = host.startswith((".", "*."))
            host = host.removeprefix("*").lstrip(".")
            if host:
                domains.append((host.rstrip("."), port, subdomains_only))
        return cls(everything, tuple(networks), tuple(domains))

    def bypasses(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is reached directly."""
        if self.everything:
            return True
        host = host.strip("[]").lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return any(address in network and wanted in (None, port)
                       for network, wanted in self.networks)
        for domain, wanted, subdomains_only in self.domains:
            if wanted not in (None, port):
                continue
            if host.endswith("." + domain) or (host == domain and not subdomains_only):
                return True
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    host, colon, port = entry.rpartition(":")
    if colon and port.isdigit() and (not host.count(":") or host.endswith("]")):
        return host, int(port)
    return entry, None


def _variable(environ: Mapping[str, str], name: str) -> str:
    """``NAME``'s value, else ``name``'s, else empty: Go's order."""
    return environ.get(name.upper()) or environ.get(name.lower()) or ""


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_http_proxy(url: str, environ: Mapping[str, str], *, explicit: str | None = None,
                      use_environment: bool = True) -> HttpProxy | None:
    """
    The HTTP proxy on the way to ``url`` (the PushProx proxy's URL), or None to go direct.

    ``explicit`` (``--http-proxy``) wins over ``HTTP_PROXY``/``HTTPS_PROXY`` and is used
    for loopback hosts too; ``NO_PROXY`` still applies to it, as curl does.  With
    ``use_environment`` false no variable is read.  Raises ``ValueError`` naming the
    variable or flag whose proxy URL is malformed.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if explicit:
        source, value = f"--{FLAG}", explicit
    elif use_environment:
        name = "HTTPS_PROXY" if parts.scheme == "https" else "HTTP_PROXY"
        source, value = name, _variable(environ, name)
        if not value or _is_loopback(host):
            return None
    else:
        return None
    if use_environment and NoProxy.parse(_variable(environ, "NO_PROXY")).bypasses(host, port):
        return None
    try:
        return parse_http_proxy(value)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
