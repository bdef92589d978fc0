# -*- test-case-name: tests.test_taps -*-
"""
The ``pushprox-tls:`` and ``pushprox-mtls:`` server endpoints: ``ssl:`` with our TLS.

Twisted's ``ssl:`` endpoint reads its certificate once, offers Twisted's default
ciphers and cannot ask clients for a certificate.  These parsers, found by Twisted
through its public ``IStreamServerEndpointStringParser`` plugin interface, take the same
description (``PORT``, ``privateKey=``, ``certKey=``, ``extraCertChain=``,
``interface=``, ``backlog=``) plus ``clientCA=`` (a PEM bundle; required by
``pushprox-mtls:``), ``requireClientCert=yes``, ``minVersion=``, ``maxVersion=`` and
``cipherSuites=``, and make a listener whose
certificates can be re-read (``pushprox.shared.tls.ServerTLS``).  Both programs turn every
``ssl:`` listener into one of these (``tls_listener``).  Kept free of heavy imports:
Twisted imports it whenever it looks for endpoint plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import SSL4ServerEndpoint, quoteStringArgument
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from pushprox.shared.tls import ServerTLS

PREFIX = "pushprox-mtls"
TLS_PREFIX = "pushprox-tls"
_SUPPORTED = ("port", "privateKey", "certKey", "extraCertChain", "interface", "backlog",
              "clientCA", "requireClientCert", "minVersion", "maxVersion", "cipherSuites")


def require_client_certificates(description: str, client_ca: str) -> str:
    """The ``pushprox-mtls:`` form of an ``ssl:`` description; others are returned as is."""
    if not description.startswith("ssl:"):
        return description
    return f"{PREFIX}:{description[4:]}:clientCA={quoteStringArgument(client_ca)}"


def tls_listener(description: str, *, client_ca: str | None = None,
                 min_version: str | None = None, max_version: str | None = None,
                 cipher_suites: tuple[str, ...] | None = None,
                 tls_files: tuple[str, str] | None = None,
                 require_client_certificate: bool = False) -> str:
    """
    The ``pushprox-tls:`` form of an ``ssl:`` description (``pushprox-mtls:`` with
    ``client_ca``), with the program's TLS versions and cipher suites unless it gives its
    own.  With ``tls_files`` (certificate, key), ``tcp:`` descriptions become TLS ones
    too.  Other descriptions are returned as is.
    """
    if tls_files is not None and description.startswith(("tcp:", "tcp6:")):
        cert, key = (quoteStringArgument(path) for path in tls_files)
        description = (f"ssl:{description.partition(':')[2]}"
                       f":privateKey={key}:certKey={cert}")
    if description.startswith("ssl:"):
        prefix = PREFIX if client_ca else TLS_PREFIX
        description = f"{prefix}:{description[4:]}"
        if client_ca:
            description += f":clientCA={quoteStringArgument(client_ca)}"
        if require_client_certificate:
            description += ":requireClientCert=yes"
    elif not description.startswith((f"{PREFIX}:", f"{TLS_PREFIX}:")):
        return description
    for option, value in (("minVersion", min_version), ("maxVersion", max_version),
                          ("cipherSuites", ",".join(cipher_suites or ()))):
        if value and f":{option}=" not in description:
            description += f":{option}={value}"
    return description


class ReloadableTLSEndpoint(SSL4ServerEndpoint):
    """An SSL endpoint whose TLS (``tls``) re-reads its files when asked to."""

    def __init__(self, reactor: Any, port: int, tls: ServerTLS, *, backlog: int,
                 interface: str) -> None:
        super().__init__(reactor, port, tls, backlog=backlog,
                         interface=interface)
        #: The listener's certificates, to reload.
        self.tls = tls


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSServerParser:
    """Parses ``pushprox-tls:PORT:privateKey=KEY:certKey=CERT[:clientCA=CA]...``."""

    prefix = TLS_PREFIX
    client_ca_required = False

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        """An SSL endpoint with our TLS profile, asking for client certificates with
        ``clientCA``."""
        from pushprox.shared.tls import ServerTLS, TLSProfile, cipher_suites, tls_version

        options = {key: str(value) for key, value in kwargs.items()}
        port = options.pop("port", str(args[0]) if args else "8443")
        key = options.pop("privateKey", None)
        cert = options.pop("certKey", key)
        extra_chain = options.pop("extraCertChain", None)
        client_ca = options.pop("clientCA", None)
        interface = options.pop("interface", "")
        backlog = options.pop("backlog", "50")
        min_version = options.pop("minVersion", None)
        max_version = options.pop("maxVersion", None)
        suites = options.pop("cipherSuites", None)
        require = options.pop("requireClientCert", "no")
        if options or len(args) > 1:
            unsupported = sorted(options) + [str(arg) for arg in args[1:]]
            raise ValueError(f"{self.prefix}: unsupported option(s) {', '.join(unsupported)} "
                             f"(supported: {', '.join(_SUPPORTED)})")
        if not key or not cert or (self.client_ca_required and not client_ca):
            needs = " and clientCA=" if self.client_ca_required else ""
            raise ValueError(f"{self.prefix}: needs privateKey= (and certKey=){needs}")
        if require not in ("yes", "no") or (require == "yes" and not client_ca):
            raise ValueError(f"{self.prefix}: requireClientCert= is yes (with clientCA=) "
                             "or no")
        default = TLSProfile()
        profile = TLSProfile(
            min_version=default.min_version if min_version is None else tls_version(min_version),
            max_version=default.max_version if max_version is None else tls_version(max_version),
            cipher_suites=default.cipher_suites if suites is None else cipher_suites(suites))
        tls = ServerTLS(cert=cert, key=key, client_ca=client_ca, extra_chain=extra_chain,
                        profile=profile, require_certificate=require == "yes")
        return ReloadableTLSEndpoint(reactor, int(port), tls, backlog=int(backlog),
                                     interface=interface)


class MutualTLSServerParser(TLSServerParser):
    """Parses ``pushprox-mtls:PORT:privateKey=KEY:certKey=CERT:clientCA=CA``."""

    prefix = PREFIX
    client_ca_required = True
