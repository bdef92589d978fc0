# -*- test-case-name: tests.test_commands -*-
"""
The ``pushprox-proxy`` and ``pushprox-client`` commands: the twistd plugins' services in
the foreground, with upstream PushProx's command line and logs on standard error.

They start the service as twistd does (``privilegedStartService``, ``startService``,
``stopService`` before the reactor shuts down, SIGTERM and SIGINT stop the reactor), but
without twistd's runner, which would write a pidfile, log in its own format to standard
output and read its own options before ours.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pushprox.shared.footprint import program_imports

if TYPE_CHECKING:  # imported for real in start(), once the options are known
    from twisted.application.service import IService

    from pushprox.shared.program import ProgramOptions


def start(tap: str, argv: list[str] | None = None) -> None:
    """Import the program's module ``tap`` (without TLS libraries unless its options may
    need them, and without ``asyncio``: see ``pushprox.shared.footprint``) and run it."""
    argv = sys.argv[1:] if argv is None else argv
    with program_imports(argv, os.environ):
        module = importlib.import_module(tap)
        from twisted.internet import reactor  # noqa: F401  (installed here, TLS-free too)
    run(module.Options(), module.makeService, argv)


def run(options: ProgramOptions, make_service: Callable[[Any, Any], IService],
        argv: list[str] | None = None) -> None:
    """Parse ``argv``, start the service, and run the reactor until a signal stops it."""
    from twisted.logger import globalLogBeginner
    from twisted.python import usage

    from pushprox.shared.logs import log_observer
    from pushprox.shared.program import StartupError

    program = options.program
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        sys.stderr.write(f"{program}: {error}\n({program} --help lists the options)\n")
        raise SystemExit(2) from None
    globalLogBeginner.beginLoggingTo(
        [log_observer(sys.stderr, level=options["log-level"] or "info",
                      format=options["log-format"] or "logfmt")],
        redirectStandardIO=False,
    )
    from twisted.internet import reactor

    try:
        service = make_service(options, reactor)
        service.privilegedStartService()
        service.startService()
    except (StartupError, usage.UsageError) as error:
        sys.stderr.write(f"{program}: {error}\n")
        raise SystemExit(1) from None
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def proxy() -> None:
    """``pushprox-proxy``: the proxy, as ``twistd -n pushprox-proxy``."""
    start("pushprox.proxy.tap")


def client() -> None:
    """``pushprox-client``: the client, as ``twistd -n pushprox-client``."""
    start("pushprox.client.tap")
