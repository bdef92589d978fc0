# -*- test-case-name: tests.test_footprint -*-
"""
Keeping what TLS needs (pyOpenSSL, cryptography, service-identity) out of a ``pushprox-proxy``
or ``pushprox-client`` process whose options name no TLS.

Twisted loads pyOpenSSL as soon as its networking is imported: ``twisted.internet.posixbase``,
``twisted.internet.tcp``, ``twisted.internet.endpoints`` and ``twisted.web.client`` each try
``import OpenSSL`` when they are imported and, when that raises ``ImportError``, carry on
without their TLS support (``listenSSL``, ``startTLS``, ``wrapClientTLS``,
``BrowserLikePolicyForHTTPS``).  That fallback, meant for installations without pyOpenSSL, is
the private detail used here: while the commands import their modules, ``OpenSSL`` is made
unimportable (``None`` in ``sys.modules``, the documented way to make an import fail); it is
importable again once they are loaded.  It saves about 14 MB of RSS per process (pyOpenSSL,
cryptography's bindings with their own OpenSSL, service-identity, idna).

What still needs TLS in such a process loads it on first use through public names only: the
client's scrape of an ``https://`` target (``pushprox.shared.tls.client_tls_endpoint``).  A process
whose options do name TLS (see ``names_tls``) imports everything as usual, as does every
process started by ``twistd``, whose own plugins import Twisted's endpoints first.
``tests/test_footprint.py`` fails if a Twisted release stops falling back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

#: The module whose import Twisted's networking modules try, and fall back from.
BLOCKED_MODULE = "OpenSSL"

#: Words in an argument or a PUSHPROX_* variable that may mean TLS: flags and variables
#: (--tls-cert, --target-tls-cacert, --tls.cacert, --client-ca), endpoint descriptions
#: (ssl:, pushprox-tls:, pushprox-mtls:), URLs (https://, rediss://) and the web
#: configuration file (--web.config.file, whose tls_server_config serves TLS).  Cluster mode
#: (--redis) keeps TLS too: its peers may speak HTTPS.  A false match only costs the memory
#: saved.
TLS_WORDS = ("tls", "ssl", "https", "client-ca", "client_ca", "cert", "redis", "web.config",
             "web-config", "web_config")

#: Where the programs read options from the environment.
ENVIRONMENT_PREFIX = "PUSHPROX_"
#: Other variables that may name TLS: upstream's PROXY_URL (https://...). The HTTP proxy
#: variables need none: they name proxies reached over plain HTTP, the only kind supported.
OTHER_VARIABLES = frozenset({"PROXY_URL"})


def names_tls(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether a command line or the environment (``PUSHPROX_*``, ``PROXY_URL``) may ask
    for TLS."""
    words = [*argv]
    for name, value in environ.items():
        if name.startswith(ENVIRONMENT_PREFIX) or name in OTHER_VARIABLES:
            words += [name, value]
    return any(tls_word in word.lower() for word in words for tls_word in TLS_WORDS)


@contextmanager
def without_tls_libraries() -> Iterator[None]:
    """Within the block, ``import OpenSSL`` fails (see the module docstring); after it, it
    works again.  Nothing is blocked if pyOpenSSL is already imported."""
    if BLOCKED_MODULE in sys.modules:
        yield
        return
    sys.modules[BLOCKED_MODULE] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get(BLOCKED_MODULE, ...) is None:
            del sys.modules[BLOCKED_MODULE]
