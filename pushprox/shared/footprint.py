# -*- test-case-name: tests.test_footprint -*-
"""
Keeping out of a ``pushprox-proxy`` or ``pushprox-client`` process what it does not use.
``program_imports`` is the block the commands import the programs' modules in.

What TLS needs, when the options name no TLS (``names_tls``): Twisted's TLS (pyOpenSSL,
cryptography, service-identity, about 14 MB of RSS) and the standard library's (``ssl`` and
``_hashlib``, which load OpenSSL's libssl and libcrypto, about 4.5 MB):
``without_tls_libraries``.

Twisted loads pyOpenSSL as soon as its networking is imported: ``twisted.internet.posixbase``,
``twisted.internet.tcp``, ``twisted.internet.endpoints`` and ``twisted.web.client`` each try
``import OpenSSL`` when they are imported and, when that raises ``ImportError``, carry on
without their TLS support (``listenSSL``, ``startTLS``, ``wrapClientTLS``,
``BrowserLikePolicyForHTTPS``).  That fallback, meant for installations without pyOpenSSL, is
the private detail used here: within the block ``OpenSSL`` is unimportable (``None`` in
``sys.modules``, the documented way to make an import fail).

The standard library's modules that Twisted imports (``twisted.python.compat`` imports
``http.cookiejar``, hence ``urllib.request``, ``http.client`` and ``hashlib``; Twisted's
Deferreds import ``asyncio``) carry on without ``ssl`` too, and ``hashlib`` without
``_hashlib`` uses the interpreter's built-in hashes.  prometheus-client does not: its
``exposition`` module imports ``ssl`` and ``urllib.request.HTTPSHandler`` whatever is used of
it, and evaluates four of ``ssl``'s names in its function signatures.  So it is imported first,
with ``DeferredSSL`` standing for ``ssl``: the four names for the import, then the real
module's, imported on first use.  ``tests/test_footprint.py`` fails if a release of Twisted or
prometheus-client needs more.

``asyncio`` (29 modules, with ``concurrent.futures`` and ``subprocess`` about 2 MB), which
nothing of the programs runs: Twisted's Deferreds import it for three names only, two of them
in annotations that are never evaluated (``from __future__ import annotations``) and
``iscoroutine``, called on what a coroutine or generator gives ``ensureDeferred`` and
``inlineCallbacks``.  ``import_deferreds`` imports ``twisted.internet.defer`` with
``DeferredAsyncio`` standing for ``asyncio``: placeholders for the two annotations and
``iscoroutine`` (the standard library's own test, without ``asyncio``).  Any other name
Twisted may take from it is the real module's, imported then; ``tests/test_footprint.py`` fails
if a release of Twisted does so, or imports ``asyncio`` elsewhere.  Afterwards ``import
asyncio`` gives the real module: ``Deferred.asFuture`` and ``fromFuture`` work as before.

Once the block ends, everything is importable again: what still needs TLS in such a process
loads it on first use (the client's scrape of an ``https://`` target,
``pushprox.shared.tls.client_tls_endpoint``).  A process whose options do name TLS imports
everything as usual.  This module imports nothing but the standard library, so that the block
can begin before anything imports Twisted; ``pushprox.shared.twistd_footprint`` does the same
for the programs under twistd, where twistd has imported ``ssl`` and ``hashlib`` already.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from types import CoroutineType, GeneratorType, ModuleType
from typing import Any, ClassVar

#: The module whose import Twisted's networking modules try, and fall back from.
BLOCKED_MODULE = "OpenSSL"
#: The standard library's binding of OpenSSL's hashes, which ``hashlib`` and ``hmac`` fall back
#: from to the interpreter's built-in hashes (``BUILTIN_HASHES``).
HASHLIB_OPENSSL = "_hashlib"
#: The built-in hash modules behind ``hashlib``'s always-available algorithms (md5, sha1, the
#: sha2 family in one module from Python 3.12 on, blake2, sha3): ``HASHLIB_OPENSSL`` is blocked
#: only where all of them are built, since ``hashlib`` logs an error for each algorithm it
#: finds in neither.
BUILTIN_HASHES = ("_md5", "_sha1", *(("_sha2",) if sys.version_info >= (3, 12)
                                     else ("_sha256", "_sha512")), "_blake2", "_sha3")
#: The standard library's TLS module.
SSL_MODULE = "ssl"
#: The library imported with ``DeferredSSL`` standing for ``ssl``: its ``exposition`` module
#: imports ``ssl`` (and ``urllib.request.HTTPSHandler``) whatever is used of it.
NEEDS_SSL_NAMES = "prometheus_client"

#: The standard library's event loop, which only ``ASYNCIO_IMPORTER`` imports in our programs.
ASYNCIO_MODULE = "asyncio"
#: Twisted's Deferreds: imported with ``DeferredAsyncio`` standing for ``asyncio``.
ASYNCIO_IMPORTER = "twisted.internet.defer"
#: What ``asyncio.iscoroutine`` accepts: coroutines, and until Python 3.12 generators too.
COROUTINE_TYPES: tuple[type, ...] = (CoroutineType, Coroutine, *(
    (GeneratorType,) if sys.version_info < (3, 12) else ()))

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


def iscoroutine(candidate: object) -> bool:
    """``asyncio.iscoroutine`` without ``asyncio``: whether ``candidate`` is a coroutine
    (or, before Python 3.12, a generator)."""
    return isinstance(candidate, COROUTINE_TYPES)


def _annotation(name: str) -> type:
    """A class named ``name`` that stands in annotations only (subscriptable, as generic
    classes are)."""
    return type(name, (), {"__class_getitem__": classmethod(lambda cls, item: cls)})


class StandIn(ModuleType):
    """
    Stands for a module (``MODULE``) while another is imported: it holds the names that
    import reads (``IMPORT_TIME_NAMES``); every other attribute is the real module's, which is
    imported on first use, and after ``forward()`` every attribute is.
    """

    MODULE: ClassVar[str]
    IMPORT_TIME_NAMES: ClassVar[dict[str, object]]

    def __init__(self) -> None:
        super().__init__(self.MODULE, self.__doc__)
        self.__dict__.update(self.IMPORT_TIME_NAMES)

    def forward(self) -> None:
        """From now on every attribute is the real module's: drop the import-time names."""
        for name in self.IMPORT_TIME_NAMES:
            self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's questions (``__path__``: a package?)
            raise AttributeError(name)
        if sys.modules.get(self.MODULE) is self:  # asked while it stands in sys.modules
            del sys.modules[self.MODULE]
        return getattr(importlib.import_module(self.MODULE), name)


class DeferredSSL(StandIn):
    """
    Stands for the standard library's ``ssl`` in the modules imported while
    ``NEEDS_SSL_NAMES`` is (``http.client``, ``urllib.request`` and prometheus-client's
    ``exposition``): every attribute is the real module's, which is imported on first use.

    While that library is imported it also holds the names its function signatures evaluate
    (``IMPORT_TIME_NAMES``): placeholders for the two annotations, and for the two default
    arguments the protocol numbers that ``ssl.SSLContext`` takes as they are.
    """

    MODULE = SSL_MODULE
    #: What prometheus-client's ``exposition`` module reads of ``ssl`` when it is imported.
    #: The protocol numbers are ``ssl.PROTOCOL_TLS_CLIENT`` and ``ssl.PROTOCOL_TLS_SERVER``
    #: (an ``IntEnum``); ``tests/test_footprint.py`` compares them with the real ones.
    IMPORT_TIME_NAMES = {
        "SSLContext": type("SSLContext", (), {}),
        "TLSVersion": type("TLSVersion", (), {}),
        "PROTOCOL_TLS_CLIENT": 16,
        "PROTOCOL_TLS_SERVER": 17,
    }


class DeferredAsyncio(StandIn):
    """
    Stands for ``asyncio`` while Twisted's Deferreds (``ASYNCIO_IMPORTER``) are imported:
    placeholders for the two names their annotations use, and ``iscoroutine``.
    """

    MODULE = ASYNCIO_MODULE
    IMPORT_TIME_NAMES = {
        "AbstractEventLoop": _annotation("AbstractEventLoop"),
        "Future": _annotation("Future"),
        "iscoroutine": iscoroutine,
    }


@contextmanager
def _blocked(name: str) -> Iterator[None]:
    """Within the block, ``import name`` fails (``None`` in ``sys.modules``, the documented
    way); after it, it works again.  Nothing is blocked if ``name`` is already imported."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get(name, ...) is None:
            del sys.modules[name]


def _import_with(standin: StandIn, name: str) -> None:
    """Import module ``name`` with ``standin`` for its module, which then forwards."""
    sys.modules[standin.MODULE] = standin
    try:
        importlib.import_module(name)
    finally:
        standin.forward()
        if sys.modules.get(standin.MODULE) is standin:
            del sys.modules[standin.MODULE]


def _builtin_hashes_present() -> bool:
    """Whether every module of ``BUILTIN_HASHES`` can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in BUILTIN_HASHES)


@contextmanager
def without_tls_libraries() -> Iterator[None]:
    """
    Within the block, the TLS libraries are not imported (see the module docstring): ``import
    OpenSSL`` and ``import ssl`` fail, ``hashlib`` uses the built-in hashes, and
    prometheus-client is imported first, with ``DeferredSSL``.  After the block, all import
    as usual.  What is already imported stays as it is.
    """
    with ExitStack() as stack:
        stack.enter_context(_blocked(BLOCKED_MODULE))
        if _builtin_hashes_present():
            stack.enter_context(_blocked(HASHLIB_OPENSSL))
        if SSL_MODULE not in sys.modules:
            if NEEDS_SSL_NAMES not in sys.modules:
                _import_with(DeferredSSL(), NEEDS_SSL_NAMES)
            stack.enter_context(_blocked(SSL_MODULE))
        yield


def import_deferreds() -> None:
    """
    Import Twisted's Deferreds with ``DeferredAsyncio`` for ``asyncio`` (see the module
    docstring); nothing is done if either is imported already.
    """
    if ASYNCIO_MODULE not in sys.modules and ASYNCIO_IMPORTER not in sys.modules:
        _import_with(DeferredAsyncio(), ASYNCIO_IMPORTER)


@contextmanager
def program_imports(argv: Sequence[str], environ: Mapping[str, str]) -> Iterator[None]:
    """The block a command imports its program in: without the TLS libraries unless
    ``argv`` or ``environ`` name TLS, and with the Deferreds imported without ``asyncio``."""
    with nullcontext() if names_tls(argv, environ) else without_tls_libraries():
        import_deferreds()
        yield
