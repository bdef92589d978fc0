# -*- test-case-name: tests.test_program -*-
"""
What both programs share around their options and services, under twistd and as
console scripts: upstream PushProx's flag names, options from the environment,
``--log-level``/``--log-format``, ``-h`` and the usage line, and usage and start-up
errors said in one line that names the flag (or the variable), before a daemon forks.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.logger import ILogObserver, Logger
from twisted.python import reflect, usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from pushprox.shared.environment import (
    apply_environment,
    environment_options,
    flags_on_command_line,
    misspelt_variables,
)
from pushprox.shared.logs import log_format, log_level, log_observer, twistd_log_file
from pushprox.shared.options import (
    OptionValueError,
    endpoint_arguments,
    naming,
    non_negative_seconds,
    tls_cipher_suites,
    tls_min_version,
)
from pushprox.shared.reload import Reloader, ReloadOnHangup, WatchFiles
from pushprox.shared.version import version_line

if TYPE_CHECKING:
    from pushprox.shared.auth import ScraperAuth
    from pushprox.shared.tls import ServerTLS
    from pushprox.shared.web_config import WebConfig

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
    in what the command line leaves out (``pushprox.shared.environment``), and under twistd a
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
    #: The other program's options class (``module.Name``), whose variables are no
    #: misspelling of ours: one environment may configure both programs.
    sibling: ClassVar[str | None] = None
    #: What follows the program's name in the usage line: its main options.
    synopsis = "[options]"
    #: The variable that set an option, by the option's name (none from the command line).
    variables_given: dict[str, str]

    optParameters: list[list[Any]] = [
        ["log-level", None, None, "Log events of this level and above: debug, info, warn "
         "or error (default: info; under twistd, all). debug also logs each scrape.",
         naming("log-level", log_level)],
        ["log-format", None, None, "logfmt or json: one line per event with stable field "
         "names; text: Twisted's format (default: logfmt; under twistd, text).",
         naming("log-format", log_format)],
        ["tls-min-version", None, None, "Lowest TLS version of every TLS listener and of "
         "the client's TLS to the proxy: TLS12 or TLS13 (default: TLS12).",
         naming("tls-min-version", tls_min_version)],
        ["tls-cipher-suites", None, None, "TLS 1.2 cipher suites of the same, by IANA name, "
         "comma-separated (default: Mozilla's intermediate profile, AEAD ciphers with "
         "forward secrecy; TLS 1.3's are always offered).",
         naming("tls-cipher-suites", tls_cipher_suites)],
        ["tls-reload-interval", None, 10.0, "Seconds between looks at the certificate, key "
         "and CA files for a renewal, picked up without a restart (default: 10; 0: only on "
         "SIGHUP).", naming("tls-reload-interval", non_negative_seconds)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.variables_given = {}

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Read upstream's names, then the environment, then the command line."""
        argv = upstream_names_to_ours(
            list(sys.argv[1:] if options is None else options), self.upstream_flags)
        try:
            given = flags_on_command_line(self, argv, same_as=self.same_as)
            self.variables_given = apply_environment(
                self, os.environ, skip=given, aliases=self.environment_aliases,
                same_as=self.same_as)
            self._warn_misspelt_variables(os.environ)
            super().parseOptions(argv)
            self._check_twistd_logging()
        except (usage.UsageError, OptionValueError) as error:
            self._refuse(str(error))

    def postOptions(self) -> None:
        """``--log-level debug`` also logs each scrape (subclasses call this first)."""
        if self["log-level"] == "debug" and "log-scrapes" in self.opts:
            self["log-scrapes"] = 1

    def given_as(self, flag: str) -> str:
        """How the user gave option ``flag``: ``--flag``, or the variable that set it."""
        return self.variables_given.get(flag, f"--{flag}")

    def opt_help(self) -> None:
        """Print this help and exit."""
        try:
            sys.stdout.write(str(self) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader (| head) has seen enough; say nothing more at exit either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)

    opt_h = opt_help

    def getSynopsis(self) -> str:
        """The usage line: the program (under twistd, twistd's line) and its main options."""
        parent = self.twistd_options()
        if isinstance(parent, usage.Options) and parent.subCommand:
            return f"{parent.getSynopsis()} {parent.subCommand} {self.synopsis}"
        return f"Usage: {self.program} {self.synopsis}"

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

    def variables(self) -> set[str]:
        """Every variable that sets an option of this program."""
        return ({option.variable for option in environment_options(self)}
                | set(self.environment_aliases))

    def _warn_misspelt_variables(self, environ: Mapping[str, str]) -> None:
        misspelt = misspelt_variables(environ, self.variables())
        if misspelt and self.sibling is not None:
            # Loaded only here: the client must not import the proxy's code to start.
            sibling_variables = reflect.namedAny(self.sibling)().variables()
            misspelt = {name: suggestion for name, suggestion in misspelt.items()
                        if name not in sibling_variables}
        for name, suggestion in sorted(misspelt.items()):
            sys.stderr.write(f"{self._name_in_messages()}: warning: {name} is not a "
                             f"variable {self.program} reads; did you mean {suggestion}?\n")

    def _name_in_messages(self) -> str:
        return self.program if self.twistd_options() is None else f"twistd {self.program}"

    def refuse_to_start(self, reason: str) -> None:
        """Stop before starting: ``reason`` in one line (a StartupError outside twistd)."""
        if self.twistd_options() is None:
            raise StartupError(reason)
        (sys.__stderr__ or sys.stderr).write(f"twistd {self.program}: {reason}\n")
        raise SystemExit(1)

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


_Options = TypeVar("_Options", bound=ProgramOptions, contravariant=True)


class MakeService(Protocol[_Options]):
    """A tap's ``makeService``."""

    def __call__(self, options: _Options, reactor: Any = None) -> IService:
        """The service that ``options`` describe, on ``reactor`` (the global one if None)."""


def one_line_errors(make_service: MakeService[_Options]) -> MakeService[_Options]:
    """
    ``make_service``, saying in one line why it cannot make the service.

    Files that cannot be used (a certificate and a key that do not match), endpoints
    that cannot be made: the program stops before it starts, under twistd before it
    becomes a daemon, instead of a traceback.
    """

    @functools.wraps(make_service)
    def make(options: _Options, reactor: Any = None) -> IService:
        try:
            return make_service(options, reactor)
        except (StartupError, usage.UsageError, OptionValueError, ValueError,
                OSError) as error:
            options.refuse_to_start(str(error))
            raise  # refuse_to_start raised already

    return make


class ProgramService(MultiService):
    """
    The service of either program.

    Under twistd, its ``--log-level``/``--log-format`` observer becomes the application's
    ``ILogObserver``, the component twistd logs to; in the foreground a listener that
    cannot start ends the program with one line instead of a traceback.
    """

    def __init__(self, *, log_observer: ILogObserver | None = None,
                 exit_on_startup_error: bool = False, daemon: bool = False) -> None:
        super().__init__()
        self._log_observer = log_observer
        self._exit_on_startup_error = exit_on_startup_error
        self._daemon = daemon

    def setServiceParent(self, parent: Any) -> None:
        """Give twistd's application our log observer, then join it.

        A daemon's listeners are tried here, before twistd forks: after it, a port in
        use could only reach the terminal as twistd's cut-off bytes repr.
        """
        if self._daemon:
            try:
                for listener in _flag_listeners(self):
                    listener.check_available()
            except StartupError as error:
                (sys.__stderr__ or sys.stderr).write(f"twistd: {error}\n")
                raise SystemExit(1) from None
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
                          exit_on_startup_error=bool(twistd.get("nodaemon")),
                          daemon=not twistd.get("nodaemon"))


class BacklogAcceptingListener(Service):
    """
    Listens on an endpoint while running, as ``StreamServerEndpointService`` does; but
    before its port closes, it accepts the connections waiting in the port's backlog.

    Closing a listening socket resets the connections the kernel completed but the process
    had not accepted yet; a balancer in front (nginx ``stream``, HAProxy, kube-proxy) that
    already sent one of them a request then closes its client's connection with no answer.
    Accepted, they are answered as any other (by a draining proxy, from another replica).
    ``doRead`` is ``IReadDescriptor``'s: a port that provides it accepts what waits.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        #: Where it listens, and what it serves there.
        self.endpoint, self.factory = endpoint, factory
        self._listening: Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        """Listen now; an endpoint that cannot listen at once raises here."""
        super().privilegedStartService()
        failures: list[Failure] = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listen, failures.append)
        if failures:
            failures[0].raiseException()

    def address(self) -> IAddress | None:
        """The address it listens on, while it does."""
        return None if self._port is None else self._port.getHost()

    def _listen(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        return port

    def startService(self) -> None:
        """Listen, unless ``privilegedStartService`` did."""
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None] | None:
        """Accept what waits in the backlog, then close the port."""
        super().stopService()
        listening, port = self._listening, self._port
        self._listening = self._port = None
        if port is None:
            if listening is not None:
                listening.cancel()
                listening.addErrback(lambda _: None)
            return None
        if IReadDescriptor.providedBy(port):
            port.doRead()
        return port.stopListening()


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
            listener = BacklogAcceptingListener(
                endpoints.serverFromString(reactor, description), factory)
        except Exception as error:
            # Whatever the endpoint's parser raises (a TLS library's error for files
            # that do not go together, among others) is about this flag's value.
            reason = str(error) or type(error).__name__
            raise usage.UsageError(f"--{flag} {description}: {reason}") from None
        listener.setServiceParent(self)
        #: The listener's re-readable TLS, if it is a TLS listener of ours.
        self.tls: ServerTLS | None = getattr(getattr(listener, "endpoint", None), "tls", None)

    def check_available(self) -> None:
        """Raise a StartupError naming the flag if a TCP port of it cannot be bound now."""
        kind, positional, keywords = endpoint_arguments(self._description)
        if kind not in ("tcp", "tcp6", "ssl", "pushprox-tls", "pushprox-mtls"):
            return
        port_text = keywords.get("port") or (positional[0] if positional else "")
        if not port_text.isdigit() or int(port_text) == 0:
            return
        interface = keywords.get("interface", "::" if kind == "tcp6" else "")
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((interface, int(port_text)))
            except OSError as error:
                raise StartupError(
                    f"--{self._flag} {self._description}: cannot listen on "
                    f"{interface or '*'}:{port_text}: {error.strerror or error}") from None

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
        except OSError as error:
            # A unix: socket's lock file or path, among others.
            raise StartupError(f"--{self._flag} {self._description}: cannot listen: "
                               f"{error.strerror or error}") from None


def _flag_listeners(service: Any) -> list[FlagListener]:
    if isinstance(service, FlagListener):
        return [service]
    return [listener for child in getattr(service, "services", ())
            for listener in _flag_listeners(child)]


def add_listener(service: IService, flag: str, description: str, factory: Any,
                 reactor: Any, *, reloader: Reloader | None = None) -> FlagListener:
    """
    Add a ``FlagListener`` for ``description`` (given with ``--flag``) to ``service``;
    register its certificates with ``reloader`` if it is a TLS listener.
    """
    listener = FlagListener(flag, description, factory, reactor)
    listener.setServiceParent(service)
    if reloader is not None and listener.tls is not None:
        where = ":".join(description.split(":")[:2])
        reloader.register(f"certificates of --{flag} {where}",
                          listener.tls.reload, watch=listener.tls.paths)
    return listener


def tls_settings(options: ProgramOptions, web: WebConfig | None) -> TLSSettings:
    """
    The TLS versions and cipher suites the flags and the web configuration file give
    (each is one setting: given in both, it is a usage error).
    """
    tls = web.tls if web is not None else None
    settings = TLSSettings(min_version=options["tls-min-version"],
                           cipher_suites=options["tls-cipher-suites"])
    if tls is None:
        return settings
    for flag, ours, theirs in (
            ("tls-min-version", settings.min_version, tls.min_version),
            ("tls-cipher-suites", settings.cipher_suites, tls.cipher_suites)):
        if ours is not None and theirs is not None:
            raise usage.UsageError(f"--{flag} and the web configuration file's "
                                   f"{flag.removeprefix('tls-').replace('-', '_')} are one "
                                   "setting: give it once")
    return TLSSettings(min_version=settings.min_version or tls.min_version,
                       max_version=tls.max_version,
                       cipher_suites=settings.cipher_suites or tls.cipher_suites)


@dataclass(frozen=True)
class TLSSettings:
    """TLS versions and TLS 1.2 cipher suites of the listeners (None: the default)."""

    min_version: str | None = None
    max_version: str | None = None
    cipher_suites: tuple[str, ...] | None = None


def tls_description(settings: TLSSettings, description: str, *, client_ca: str | None = None,
                    web: WebConfig | None = None) -> str:
    """
    ``description`` with our TLS (``pushprox-tls:``) and ``settings`` if it is a TLS one;
    with the web configuration file's TLS, ``tcp:`` listeners become TLS ones.
    """
    from pushprox.shared.tls_listeners import tls_listener

    tls = web.tls if web is not None else None
    require = False
    tls_files = None
    if tls is not None:
        tls_files = (tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            client_ca = tls.client_ca_file
            require = bool(tls.client_certificate)
    return tls_listener(description, client_ca=client_ca, tls_files=tls_files,
                        require_client_certificate=require,
                        min_version=settings.min_version, max_version=settings.max_version,
                        cipher_suites=settings.cipher_suites)


def reload_services(service: IService, reloader: Reloader, reactor: Any,
                    interval: float) -> None:
    """
    Have SIGHUP re-read ``reloader``'s settings (never stop the program), and look for
    changed files every ``interval`` seconds (not at all for 0).
    """
    ReloadOnHangup(reloader.reload_all, reactor).setServiceParent(service)
    if interval > 0:
        WatchFiles(reloader, reactor, interval).setServiceParent(service)


def web_headers(web: WebConfig) -> list[tuple[bytes, bytes]]:
    """The web configuration file's headers, as the site sets them."""
    return [(name.encode("ascii"), value.encode("utf-8")) for name, value in web.headers]


class WebConfigReload:
    """Re-reads ``--web.config.file``: its users and headers apply at once."""

    log = Logger()

    def __init__(self, path: str, web: WebConfig, headers: list[tuple[bytes, bytes]],
                 scraper_auth: ScraperAuth) -> None:
        self._path = path
        self._tls = web.tls
        self._headers = headers
        self._scraper_auth = scraper_auth
        #: Whether the endpoints were started guarded: only then can new users apply.
        self._guarded = scraper_auth.enabled

    def reload(self) -> None:
        """Read the file again; raise ValueError and change nothing if it is bad."""
        from pushprox.shared.auth import PasswordChecker
        from pushprox.shared.web_config import load_web_config

        web = load_web_config(self._path)
        self._scraper_auth.replace_endpoint_passwords(
            PasswordChecker(dict(web.users)) if web.users else None)
        self._headers[:] = web_headers(web)
        if web.users and not self._guarded:
            self.log.warn("{path}: basic_auth_users apply at the next start (the endpoints "
                          "were started without users)", path=self._path)
        if web.tls != self._tls:
            # The listeners were made with it; their certificate files are still re-read.
            self.log.warn("{path}: tls_server_config changed; it applies at the next "
                          "start", path=self._path)


def serve_site(service: IService, flag: str, endpoints: Sequence[str], site: Any,
               reactor: Any, reloader: Reloader, *, tls: TLSSettings, web: WebConfig | None,
               web_config_file: str | None, auth: ScraperAuth | None,
               headers: list[tuple[bytes, bytes]], client_ca: str | None = None) -> None:
    """
    Serve ``site`` on each of ``endpoints`` (given with ``--flag``), with ``tls`` and the
    web configuration file's TLS; have the file's users (``auth``) and ``headers`` re-read
    with the other files.
    """
    for endpoint in endpoints:
        add_listener(service, flag, tls_description(tls, endpoint, client_ca=client_ca, web=web),
                     site, reactor, reloader=reloader)
    if web is not None and web_config_file is not None and auth is not None:
        reloader.register("--web.config.file", WebConfigReload(
            web_config_file, web, headers, auth).reload)
