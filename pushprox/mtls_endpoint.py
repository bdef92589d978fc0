# -*- test-case-name: tests.test_taps -*-
"""
The ``pushprox-mtls:`` server endpoint: ``ssl:`` that also requires a client certificate.

Twisted's ``ssl:`` endpoint cannot ask clients for a certificate.  This parser, found
by Twisted through its public ``IStreamServerEndpointStringParser`` plugin interface,
takes the same description (``PORT``, ``privateKey=``, ``certKey=``, ``interface=``,
``backlog=``) plus ``clientCA=`` (a PEM bundle).  ``--client-ca`` turns every ``ssl:``
listener into one of these.  Kept free of heavy imports: Twisted imports it whenever it
looks for endpoint plugins.
"""

from __future__ import annotations

from twisted.internet.endpoints import SSL4ServerEndpoint, quoteStringArgument
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

PREFIX = "pushprox-mtls"


def require_client_certificates(description: str, client_ca: str) -> str:
    """The ``pushprox-mtls:`` form of an ``ssl:`` description; others are returned as is."""
    if not description.startswith("ssl:"):
        return description
    return f"{PREFIX}:{description[4:]}:clientCA={quoteStringArgument(client_ca)}"


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """Parses ``pushprox-mtls:PORT:privateKey=KEY:certKey=CERT:clientCA=CA``."""

    prefix = PREFIX

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        """An SSL endpoint whose context requires a certificate signed by ``clientCA``."""
        from pushprox.tls import server_context_factory

        options = {key: str(value) for key, value in kwargs.items()}
        port = options.pop("port", str(args[0]) if args else "8443")
        key = options.pop("privateKey", None)
        cert = options.pop("certKey", key)
        client_ca = options.pop("clientCA", None)
        interface = options.pop("interface", "")
        backlog = options.pop("backlog", "50")
        if options or len(args) > 1:
            unsupported = sorted(options) + [str(arg) for arg in args[1:]]
            raise ValueError(f"{PREFIX}: unsupported option(s) {', '.join(unsupported)} "
                             "(supported: port, privateKey, certKey, interface, backlog)")
        if not key or not cert or not client_ca:
            raise ValueError(f"{PREFIX}: needs privateKey= (and certKey=) and clientCA=")
        context = server_context_factory(cert=cert, key=key, client_ca=client_ca)
        return SSL4ServerEndpoint(reactor, int(port), context, backlog=int(backlog),
                                  interface=interface)
