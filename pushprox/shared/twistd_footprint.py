# -*- test-case-name: tests.test_footprint -*-
"""
``pushprox.shared.footprint`` under twistd: ``twistd pushprox-proxy`` and ``twistd
pushprox-client`` import their programs without TLS libraries when their options name none.

The plugin module imports its endpoint parsers (and with them Twisted's endpoints) within
``twistd_imports()``, and ``TLSFreeServiceMaker`` imports the program's module and the reactor's
base class (which twistd imports when it installs the reactor, after the options are parsed)
within it too.  twistd itself has imported ``ssl`` and ``hashlib`` by then (through
``twisted.python.compat``), so under twistd only Twisted's TLS (pyOpenSSL, cryptography,
service-identity) is kept out.  That needs twistd's plugin cache (``dropin.cache``) to be up to
date: when twistd rebuilds it, it imports every plugin of every installed package, Twisted's
own among them, and those load pyOpenSSL and cryptography before ours runs.  twistd's
``--reactor`` does too: it installs the reactor while twistd reads its own options.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from twisted.application.service import ServiceMaker

from pushprox.shared.footprint import names_tls, without_tls_libraries

#: twistd's module, imported in every process that twistd runs.
TWISTD_MODULE = "twisted.scripts.twistd"
#: Our programs as twistd subcommands (the plugins' tap names).
TWISTD_PROGRAMS = frozenset({"pushprox-proxy", "pushprox-client"})
#: The reactors' base class, which tries ``import OpenSSL`` (for ``listenSSL``) when imported:
#: under twistd it is imported when the reactor is installed, after the program's module.
REACTOR_BASE = "twisted.internet.posixbase"


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
