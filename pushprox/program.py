# -*- test-case-name: tests.test_program -*-
"""
What both programs share around their options and services, under twistd and as
console scripts: upstream PushProx's flag names, options from the environment,
``--log-level``/``--log-format``, and usage and start-up errors said in one line that
names the flag.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from pushprox.environment import apply_environment, flags_on_command_line
from pushprox.logs import log_format, log_level, log_observer, twistd_log_file
from pushprox.options import OptionValueError, naming
from pushprox.version import version_line

#: Upstream's logging flags, the same in both programs.
UPSTREAM_LOG_FLAGS = {"log.level": "log-level", "log.format": "log-format"}


def upstream_names(*names: str, renamed: Mapping[str, str]) -> dict[str, str]:
    """
    Upstream flag names → ours: each of ``names`` is ours with dots as dashes
    (``scrape.max-timeout`` is ``scrape-max-timeout``); ``renamed`` maps the others.
    """
    return {**UPSTREAM_LOG_FLAGS, **{name: name.replace(".", "-") for name in names},
            **renamed}


class StartupError(Exception):
    """The program cannot start; the message is one line that names the flag at fault."""


def upstream_names_to_ours(argv: list[str], names: Mapping[str, str]) -> list[str]:
    """``argv`` with upstream's long flag names (``--web.listen-address``) replaced by ours."""
    renamed: list[str] = []
    for argument in argv:
        if argument == "--":
            renamed.extend(argv[len(renamed):])
            break
        name, equals, value = argument.partition("=")
        if name.startswith("--") and name[2:] in names:
            argument = "--" + names[name[2:]] + equals + value
        renamed.append(argument)
    return renamed


class ProgramOptions(usage.Options):
    """
    The options both programs share, and how their command line is read.

    Upstream's flag names (``upstream_flags``) are read as ours, the environment fills
    in what the command line leaves out (``pushprox.environment``), and under twistd a
    bad option stops the program with its one-line reason instead of twistd's usage dump.
    """

    #: The program's name in messages.
    program: ClassVar[str] = "pushprox"
    #: Upstream PushProx's flag names and ours, for this program.
    upstream_flags: ClassVar[Mapping[str, str]] = UPSTREAM_LOG_FLAGS
    #: Variables read beside the PUSHPROX_ ones, and the flag each sets.
    environment_aliases: ClassVar[Mapping[str, str]] = {}
    #: Flags that are another name of a flag (usage.Options' own synonyms are one letter).
    same_as: ClassVar[Mapping[str, str]] = {}

    optParameters: list[list[Any]] = [
        ["log-level", None, None, "Log events of this level and above: debug, info, warn "
         "or error (default: info; under twistd, all). debug also logs each scrape.",
         naming("log-level", log_level)],
        ["log-format", None, None, "logfmt or json: one line per event with stable field "
         "names; text: Twisted's format (default: logfmt; under twistd, text).",
         naming("log-format", log_format)],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Read upstream's names, then the environment, then the command line."""
        argv = upstream_names_to_ours(
            list(sys.argv[1:] if options is None else options), self.upstream_flags)
        try:
            given = flags_on_command_line(self, argv, same_as=self.same_as)
            apply_environment(self, os.environ, skip=given, aliases=self.environment_aliases,
                              same_as=self.same_as)
            super().parseOptions(argv)
            self._check_twistd_logging()
        except (usage.UsageError, OptionValueError) as error:
            self._refuse(str(error))
        if self["log-level"] == "debug" and "log-scrapes" in self.opts:
            self["log-scrapes"] = 1

    def opt_version(self) -> None:
        """Print pushprox's version (and Python's and Twisted's) and exit."""
        sys.stdout.write(version_line(self.program) + "\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def twistd_options(self) -> Mapping[str, Any] | None:
        """twistd's own options when twistd runs this program, else None."""
        parent = getattr(self, "parent", None)
        return parent if isinstance(parent, usage.Options) else None

    def _check_twistd_logging(self) -> None:
        twistd = self.twistd_options()
        if twistd is None or not (self["log-level"] or self["log-format"]):
            return
        for option in ("logger", "syslog"):
            if twistd.get(option):
                raise usage.UsageError(
                    f"--log-level and --log-format choose the log observer; twistd "
                    f"--{option} does too, give one or the other")
        if twistd.get("logfile") == "-" and not twistd.get("nodaemon"):
            raise usage.UsageError("a daemon cannot log to standard output")

    def _refuse(self, reason: str) -> None:
        if self.twistd_options() is None:
            raise usage.UsageError(reason)
        # twistd would print its whole usage first and the reason after it, prefixed
        # with its own command line; one line that says what is wrong is more useful.
        sys.stderr.write(f"twistd {self.program}: {reason}\n"
                         f"(twistd {self.program} --help lists the options)\n")
        raise SystemExit(1)

    def getUsage(self, width: int | None = None) -> str:
        """The usage text, with the upstream flag names accepted as synonyms."""
        names = ", ".join(f"--{theirs} (--{ours})"
                          for theirs, ours in sorted(self.upstream_flags.items()))
        return (super().getUsage(width)
                + f"\nUpstream PushProx's flags are read as ours: {names}.\n"
                + "Every option can also come from the environment: PUSHPROX_ and its name "
                "in upper case, - as _ (PUSHPROX_LOG_LEVEL=debug).\n")


class ProgramService(MultiService):
    """
    The service of either program.

    Under twistd, its ``--log-level``/``--log-format`` observer becomes the application's
    ``ILogObserver``, the component twistd logs to; in the foreground a listener that
    cannot start ends the program with one line instead of a traceback.
    """

    def __init__(self, *, log_observer: ILogObserver | None = None,
                 exit_on_startup_error: bool = False) -> None:
        super().__init__()
        self._log_observer = log_observer
        self._exit_on_startup_error = exit_on_startup_error

    def setServiceParent(self, parent: Any) -> None:
        """Give twistd's application our log observer, then join it."""
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """Start the listeners; in the foreground, a failure is said in one line."""
        try:
            super().privilegedStartService()
        except StartupError as error:
            if not self._exit_on_startup_error:
                raise
            # twistd has replaced sys.stderr with its log by now; say it on the terminal.
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"twistd: {error}\n")
            raise SystemExit(1) from None


def program_service(options: ProgramOptions) -> ProgramService:
    """An empty ``ProgramService`` for these options, under twistd or not."""
    twistd = options.twistd_options()
    if twistd is None:
        return ProgramService()
    observer = None
    if options["log-level"] or options["log-format"]:
        observer = log_observer(twistd_log_file(twistd), level=options["log-level"] or "debug",
                                format=options["log-format"] or "text")
    return ProgramService(log_observer=observer,
                          exit_on_startup_error=bool(twistd.get("nodaemon")))


class FlagListener(MultiService):
    """Listens on one endpoint given by a flag; says which flag when it cannot."""

    def __init__(self, flag: str, description: str, factory: Any, reactor: Any) -> None:
        super().__init__()
        #: The protocol factory served, as StreamServerEndpointService.factory.
        self.factory = factory
        self._flag = flag
        self._description = description
        try:
            # Raises at once on a port in use, unlike a bare StreamServerEndpointService,
            # which would only log it.
            listener = strports.service(description, factory, reactor=reactor)
        except ValueError as error:
            raise usage.UsageError(f"--{flag} {description}: {error}") from None
        listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Listen, or raise a StartupError naming the flag."""
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            where = f"{error.interface or '*'}:{error.port}"
            raise StartupError(
                f"--{self._flag} {self._description}: cannot listen on {where}: {reason}"
            ) from None


def add_listener(service: IService, flag: str, description: str, factory: Any,
                 reactor: Any) -> None:
    """Add a ``FlagListener`` for ``description`` (given with ``--flag``) to ``service``."""
    FlagListener(flag, description, factory, reactor).setServiceParent(service)
