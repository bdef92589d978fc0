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
whose options do name TLS (see ``names_tls``) imports everything as usual.

The same holds under ``twistd pushprox-proxy`` and ``twistd pushprox-client``
(``twistd_without_tls``): the plugin module imports its endpoint parsers (and with them
Twisted's endpoints) within the block, and ``TLSFreeServiceMaker`` imports the program's module
and the reactor's base class (which twistd imports when it installs the reactor, after the
options are parsed) within it too.  That needs twistd's plugin cache (``dropin.cache``) to be
up to date: when twistd rebuilds it, it imports every plugin of every installed package,
Twisted's own among them, and those load pyOpenSSL and cryptography before ours runs.
twistd's ``--reactor`` does too: it installs the reactor while twistd reads its own options.
``tests/test_footprint.py`` fails if a Twisted release stops falling back.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from twisted.application.service import ServiceMaker

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

#: twistd's module, imported in every process that twistd runs.
TWISTD_MODULE = "twisted.scripts.twistd"
#: Our programs as twistd subcommands (the plugins' tap names).
TWISTD_PROGRAMS = frozenset({"pushprox-proxy", "pushprox-client"})
#: The reactors' base class, which tries ``import OpenSSL`` (for ``listenSSL``) when imported:
#: under twistd it is imported when the reactor is installed, after the program's module.
REACTOR_BASE = "twisted.internet.posixbase"


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


def twistd_without_tls(argv: Sequence[str], environ: Mapping[str, str],
                       modules: Collection[str]) -> bool:
    """Whether this process is twistd (``modules`` holds ``TWISTD_MODULE``) running one of
    our programs with a command line (``argv``, twistd's options and ours) and environment
    that name no TLS."""
    return (TWISTD_MODULE in modules and any(word in TWISTD_PROGRAMS for word in argv)
            and not names_tls(argv, environ))


def twistd_imports() -> AbstractContextManager[None]:
    """``without_tls_libraries()`` in a process that ``twistd_without_tls`` describes (read
    from ``sys.argv``, ``os.environ`` and ``sys.modules``), else a block that does nothing."""
    if twistd_without_tls(sys.argv[1:], os.environ, sys.modules):
        return without_tls_libraries()
    return nullcontext()


class TLSFreeServiceMaker(ServiceMaker):
    """twistd's ``ServiceMaker`` whose program module, and the reactors' base class, are
    imported within ``twistd_imports()``: without TLS libraries when twistd runs the program
    with options that name no TLS."""

    @property
    def options(self) -> Any:
        """The program's ``Options`` class, its module imported as the class docstring says."""
        with twistd_imports():
            module = importlib.import_module(self.module)
            importlib.import_module(REACTOR_BASE)
        return module.Options
