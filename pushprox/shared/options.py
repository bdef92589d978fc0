# -*- test-case-name: tests.test_options -*-
"""
Parsers of option values shared by both programs (no imports of either side).

Durations and listen addresses are read in our syntax and in the Go PushProx's, so that
a command line written for the upstream binaries means the same here: ``15`` or ``15s``,
``5m``, ``1m30s``, ``250ms``; ``tcp:8080``, ``8080`` or ``:8080``.

Every value is checked here, as the command line is read, so that a mistake stops the
program before it starts, in one line naming the flag or variable: host names, URLs,
ports, files (readable, and PEM of the kind the flag wants; cryptography is imported
only when a TLS file is given), the files and ports of an endpoint description.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

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

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        #: Why the value is refused, without the option's name (for a variable's message).
        self.reason = reason or message


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
    from pushprox.shared.tls import tls_version

    return tls_version(value)


def tls_cipher_suites(value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of TLS 1.2 cipher suites by IANA name."""
    from pushprox.shared.tls import cipher_suites

    return cipher_suites(value)


def positive_int(value: str) -> int:
    """Parse a positive integer."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


def port_number(value: str) -> int:
    """Parse a TCP port number."""
    if not value.isdigit() or not value.isascii():
        raise ValueError(f"port {value!r} is not a number")
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError(f"port {value} is out of range (1-65535)")
    return number


#: A host name: letters, digits, '-' and '_' in dot-separated labels (the FQDN rule of
#: the protocol, pushprox.shared.wire).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def host_name(value: str) -> str:
    """Parse a host name (``node1.example``), refusing ``host:port`` and URLs."""
    if "://" in value:
        raise ValueError("a host name, not a URL")
    if value.startswith("[") and value.endswith("]"):
        try:
            ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValueError(f"{value} is not an IPv6 address") from None
        return value
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and _HOST_NAME.fullmatch(host):
        raise ValueError(f"a host name, not host:port (drop :{port}: the port is the one "
                         "Prometheus scrapes)")
    if not _HOST_NAME.fullmatch(value) or len(value) > 253:
        raise ValueError("not a host name (letters, digits, '-', '_' and dots)")
    return value


def http_url(value: str) -> str:
    """Parse an ``http://`` or ``https://`` URL with a host and a valid port."""
    if any(character.isspace() for character in value):
        raise ValueError("a URL has no spaces")
    try:
        parts = urlsplit(value)
    except ValueError as error:
        raise ValueError(f"not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("not an http:// or https:// URL (e.g. http://proxy:8080/)")
    host_and_port = parts.netloc.rpartition("@")[2]
    if host_and_port.startswith("["):
        host, _, rest = host_and_port[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{host_and_port} is not HOST:PORT")
        port = rest[1:] if rest else ""
    else:
        host, colon, port = host_and_port.partition(":")
        if ":" in port:
            raise ValueError(f"{host_and_port} is not HOST:PORT (an IPv6 address goes "
                             "in brackets)")
        if not host:
            raise ValueError("the URL has no host")
        if not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{host} is not a host name")
        if colon and not port:
            raise ValueError(f"{host_and_port}: the port is missing after ':'")
    if port:
        port_number(port)
    return value


def readable_file(value: str) -> str:
    """Parse the path of a file that this process can read.

    A regular file is opened; a pipe (``<(command)``, a FIFO) is only checked for
    permission, since reading from it now would take what the program reads later.
    """
    try:
        info = os.stat(value)
    except OSError as error:
        raise ValueError(error.strerror or str(error)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError("a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        if not os.access(value, os.R_OK):
            raise ValueError("Permission denied")
        return value
    try:
        with open(value, "rb") as opened:
            opened.read(1)
    except OSError as error:
        raise ValueError(error.strerror or str(error)) from None
    return value


def _regular_file_bytes(value: str) -> bytes | None:
    """The content of a readable regular file, None for a readable pipe (see above)."""
    readable_file(value)
    if not stat.S_ISREG(os.stat(value).st_mode):
        return None
    with open(value, "rb") as opened:
        return opened.read()


def pem_certificates(value: str) -> str:
    """Parse the path of a readable file of PEM certificates (a bundle)."""
    from cryptography import x509

    data = _regular_file_bytes(value)
    if data is None:
        return value
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("holds no PEM certificate") from None
    return value


def pem_private_key(value: str) -> str:
    """Parse the path of a readable file holding an unencrypted PEM private key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _regular_file_bytes(value)
    if data is None:
        return value
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("holds no PEM private key") from None
    return value


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``name`` is most likely a misspelling of, if any."""
    squeezed = {candidate.replace("_", "").replace("-", ""): candidate
                for candidate in known}
    exact = squeezed.get(name.replace("_", "").replace("-", ""))
    if exact is not None:
        return exact
    import difflib  # only on a misspelling: 0.2 MB that a correct command line never needs

    close = difflib.get_close_matches(name, list(squeezed.values()), n=1, cutoff=0.8)
    return close[0] if close else None


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


def _is_endpoint_type(name: str) -> bool:
    """Whether ``name`` is a server endpoint type: Twisted's own, or a plugin's (asked only
    when it is neither Twisted's nor an IP address: loading the plugins imports each plugin
    module, about 0.9 MB)."""
    if name in _BUILTIN_ENDPOINT_TYPES:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return False
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return any(parser.prefix == name
               for parser in getPlugins(IStreamServerEndpointStringParser))


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
        if not _is_endpoint_type(host):
            return f"tcp:{port_number(port)}:interface={host}"
    return value


def checked_listen_endpoint(value: str) -> str:
    """``listen_endpoint``, checked by ``check_endpoint_files``."""
    return check_endpoint_files(listen_endpoint(value))


def optional_listen_endpoint(value: str) -> str:
    """``checked_listen_endpoint``, or the empty string that turns a listener off."""
    return checked_listen_endpoint(value) if value else ""


def naming(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, raising an ``OptionValueError`` that names ``--flag`` and the value."""

    def parse_named(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise OptionValueError(f"--{flag} {value}: {error}", reason=str(error)) from None

    parse_named.__doc__ = parse.__doc__
    return parse_named


def endpoint_arguments(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint description's type, positional and keyword arguments, unescaped.

    ``ssl:8443:privateKey=key.pem`` gives ``("ssl", ["8443"], {"privateKey": "key.pem"})``;
    ``\\:`` stands for a colon inside a value, as in Twisted's endpoint syntax.
    """
    parts = [re.sub(r"\\(.)", r"\1", part)
             for part in re.split(r"(?<!\\):", description)]
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals:
            keywords[name] = value
        else:
            positional.append(part)
    return parts[0], positional, keywords


#: Endpoint types whose descriptions name TLS files, as Twisted's ``ssl:`` does.
_TLS_ENDPOINT_TYPES = frozenset({"ssl", "pushprox-tls", "pushprox-mtls"})
#: Endpoint types whose first argument is a TCP port.
_TCP_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "ssl", "pushprox-tls", "pushprox-mtls"})


def check_endpoint_files(description: str) -> str:
    """``description``, once its TCP port is one, the certificate and key files it
    names are readable PEM and the directory of a ``unix:`` socket exists."""
    kind, positional, keywords = endpoint_arguments(description)
    if kind == "unix":
        socket_path = keywords.get("address") or (positional[0] if positional else "")
        directory = os.path.dirname(socket_path) or "."
        if not os.path.isdir(directory):
            raise ValueError(f"{directory} is not a directory")
        return description
    if kind in _TCP_ENDPOINT_TYPES:
        port = keywords.get("port") or (positional[0] if positional else "")
        if port != "0":  # 0: any free port
            port_number(port)
    if kind not in _TLS_ENDPOINT_TYPES:
        return description
    key = keywords.get("privateKey")
    if key is None:
        raise ValueError(f"an {kind}: endpoint needs privateKey=KEY.pem (and certKey=CERT.pem)")
    for name, parse in (("privateKey", pem_private_key), ("certKey", pem_certificates),
                        ("extraCertChain", pem_certificates), ("clientCA", pem_certificates)):
        path = key if name == "certKey" and name not in keywords else keywords.get(name)
        if path is None:
            continue
        try:
            parse(path)
        except ValueError as error:
            raise ValueError(f"{name}={path}: {error}") from None
    cert = keywords.get("certKey", key)
    if not key_matches_certificate(cert, key):
        raise ValueError(f"privateKey={key} is not the key of certKey={cert}")
    return description


def target_address(value: str) -> str:
    """Parse an address to connect to: a host name or an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        host_name(value)
    return value


def key_matches_certificate(cert: str, key: str) -> bool:
    """Whether the private key in file ``key`` is that of the first certificate in
    ``cert`` (both already checked as PEM of their kind); True for pipes, which cannot
    be read twice."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_data, key_data = _regular_file_bytes(cert), _regular_file_bytes(key)
    if cert_data is None or key_data is None:
        return True
    certificate = x509.load_pem_x509_certificates(cert_data)[0]
    private_key = serialization.load_pem_private_key(key_data, password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(certificate.public_key().public_bytes(*spki)
                == private_key.public_key().public_bytes(*spki))
