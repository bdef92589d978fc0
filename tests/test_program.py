"""
Tests for what both programs share: upstream PushProx's flags, options from the
environment, twistd logging and start-up errors (pushprox.shared.program,
pushprox.shared.environment).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from io import StringIO
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from twisted.application.service import Application, IServiceCollection
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from pushprox.client import tap as client_tap
from pushprox.proxy import tap as proxy_tap
from pushprox.shared.config import ClientConfig, ProxyConfig
from pushprox.shared.environment import environment_options
from pushprox.shared.logs import LEVELS
from pushprox.shared.program import (
    FlagListener,
    ProgramService,
    StartupError,
    program_service,
    upstream_names_to_ours,
)
from tests.tlsfixtures import make_pki


class _RaisingReactorClock(RaisingMemoryReactor, Clock):
    """A reactor whose listens fail, with a clock (the proxy's site reads the time)."""

    def __init__(self, listenException: Exception) -> None:
        RaisingMemoryReactor.__init__(self, listenException=listenException)
        Clock.__init__(self)


CLIENT = ["--proxy-url", "http://proxy:8080/", "--fqdn", "node1.example"]


def parse(options_class: type[Any], argv: list[str], parent: Any = None) -> Any:
    """Parsed options, as twistd's subcommand when ``parent`` is given."""
    options = options_class()
    if parent is not None:
        options.parent = parent
    options.parseOptions(argv)
    return options


class UpstreamFlagTests(SynchronousTestCase):
    """Every flag of the Go PushProx reaches the setting it means, in both forms."""

    def setUp(self) -> None:
        self.patch(os, "environ", {})

    def test_proxy_flags(self) -> None:
        """web.listen-address, scrape.*, registration.timeout and log.* of the Go proxy."""
        for argv in (
            ["--web.listen-address=:8081", "--scrape.max-timeout=5m",
             "--scrape.default-timeout=1m30s", "--registration.timeout=250ms",
             "--log.level=debug", "--log.format=json"],
            ["--web.listen-address", ":8081", "--scrape.max-timeout", "5m",
             "--scrape.default-timeout", "1m30s", "--registration.timeout", "250ms",
             "--log.level", "debug", "--log.format", "json"],
        ):
            options = parse(proxy_tap.Options, argv)
            self.assertEqual(options["listen"], ["tcp:8081"])
            self.assertEqual(options.config(), ProxyConfig(
                scrape_max_timeout=300.0, scrape_default_timeout=90.0,
                registration_timeout=0.25, log_scrapes=True))
            self.assertEqual((options["log-level"], options["log-format"]), ("debug", "json"))

    def test_debug_level_logs_each_scrape_in_the_client_config(self) -> None:
        """--log.level=debug turns log_scrapes on in every name's configuration."""
        options = parse(client_tap.Options, ["--fqdn=node1.example", "--fqdn=node2.example",
                                             "--proxy-url=http://proxy:8080",
                                             "--log.level=debug"])
        self.assertEqual([config.log_scrapes for config in options.configs()], [True, True])

    def test_client_flags(self) -> None:
        """fqdn, proxy-url, tls.*, metrics-addr, proxy.retry.* and log.* of the Go client."""
        directory = tempfile.mkdtemp(prefix="pushprox-program-")
        self.addCleanup(shutil.rmtree, directory)
        pki = make_pki(directory)
        ca, cert, key = pki.ca_cert, pki.client.cert, pki.client.key
        for argv in (
            ["--fqdn=node1.example", "--proxy-url=http://proxy:8080", f"--tls.cacert={ca}",
             f"--tls.cert={cert}", f"--tls.key={key}", "--metrics-addr=:9370",
             "--proxy.retry.initial-wait=250ms", "--proxy.retry.max-wait=1m",
             "--log.level=warn", "--log.format=logfmt"],
            ["--fqdn", "node1.example", "--proxy-url", "http://proxy:8080", "--tls.cacert",
             ca, "--tls.cert", cert, "--tls.key", key, "--metrics-addr", ":9370",
             "--proxy.retry.initial-wait", "250ms", "--proxy.retry.max-wait", "1m",
             "--log.level", "warn", "--log.format", "logfmt"],
        ):
            options = parse(client_tap.Options, argv)
            self.assertEqual(options.config(), ClientConfig(
                proxy_url="http://proxy:8080", fqdn="node1.example",
                retry_initial_wait=0.25, retry_max_wait=60.0))
            self.assertEqual(
                [options[k] for k in ("tls-cacert", "tls-cert", "tls-key", "metrics-listen",
                                      "log-level", "log-format")],
                [ca, cert, key, "tcp:9370", "warn", "logfmt"])

    def test_our_flags_take_go_syntax_too(self) -> None:
        """A bare port and a Go duration work with our own names."""
        options = parse(proxy_tap.Options, ["--port", "8080", "--scrape-max-timeout", "2m"])
        self.assertEqual((options["listen"], options["scrape-max-timeout"]),
                         (["tcp:8080"], 120.0))
        options = parse(client_tap.Options, [*CLIENT, "--metrics-listen", "9369"])
        self.assertEqual(options["metrics-listen"], "tcp:9369")

    def test_help_lists_upstream_names(self) -> None:
        """--help of both programs renders, and names upstream's flags and the variables."""
        proxy = proxy_tap.Options().getUsage(width=200)
        self.assertIn("--web.listen-address (--listen)", proxy)
        self.assertIn("PUSHPROX_LOG_LEVEL=debug", proxy)
        self.assertIn("--metrics-addr (--metrics-listen)", client_tap.Options().getUsage())

    def test_port_variable_is_repeatable_like_listen(self) -> None:
        """PUSHPROX_PORT, --listen's other name, takes a list too."""
        self.patch(os, "environ", {"PUSHPROX_PORT": "8081,8082"})
        self.assertEqual(parse(proxy_tap.Options, [])["listen"], ["tcp:8081", "tcp:8082"])

    def test_renaming_stops_at_double_dash(self) -> None:
        """Only flags are renamed; a value that looks like a flag is left alone."""
        self.assertEqual(
            upstream_names_to_ours(["--log.level", "debug", "--", "--log.level"],
                                   {"log.level": "log-level"}),
            ["--log-level", "debug", "--", "--log.level"])

    def test_bad_values_name_the_flag(self) -> None:
        """A malformed value is a usage error saying which flag and why."""
        for argv, message in [
            (["--scrape.max-timeout=5x"], "--scrape-max-timeout 5x: '5x' is not a duration"),
            (["--log.level=loud"], "--log-level loud: expected one of debug, info, warn, error"),
            (["--web.listen-address=:99999"],
             "--listen :99999: port 99999 is out of range (1-65535)"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, proxy_tap.Options, argv)
            self.assertTrue(str(error).startswith(message), str(error))


class EnvironmentTests(SynchronousTestCase):
    """Every option can come from a PUSHPROX_ variable; the command line wins."""

    def environ(self, **variables: str) -> None:
        self.patch(os, "environ", variables)

    def test_every_option_has_a_variable(self) -> None:
        """Parameters, flags and opt_ methods, inherited ones too, by the naming rule."""
        proxy = {o.variable: o.kind for o in environment_options(proxy_tap.Options())}
        self.assertEqual(
            {name: proxy[name] for name in (
                "PUSHPROX_SCRAPE_AUTH", "PUSHPROX_MAX_CLIENTS", "PUSHPROX_LOG_SCRAPES",
                "PUSHPROX_NO_CLIENTS_ENDPOINT", "PUSHPROX_LISTEN", "PUSHPROX_PORT",
                "PUSHPROX_SCRAPE_ALLOW_CIDR", "PUSHPROX_LOG_LEVEL", "PUSHPROX_LOG_FORMAT")},
            {"PUSHPROX_SCRAPE_AUTH": "parameter", "PUSHPROX_MAX_CLIENTS": "parameter",
             "PUSHPROX_LOG_SCRAPES": "flag", "PUSHPROX_NO_CLIENTS_ENDPOINT": "flag",
             "PUSHPROX_LISTEN": "method", "PUSHPROX_PORT": "method",
             "PUSHPROX_SCRAPE_ALLOW_CIDR": "method", "PUSHPROX_LOG_LEVEL": "parameter",
             "PUSHPROX_LOG_FORMAT": "parameter"})
        self.assertNotIn("PUSHPROX_HELP", proxy)
        client = {o.variable for o in environment_options(client_tap.Options())}
        self.assertTrue({"PUSHPROX_ALLOW_ANY", "PUSHPROX_ALLOW_PORT", "PUSHPROX_LABEL",
                         "PUSHPROX_TLS_CACERT", "PUSHPROX_METRICS_LISTEN"} <= client)

    def test_values_from_the_environment(self) -> None:
        """Parsed as on the command line; repeatable ones split on commas."""
        self.environ(PUSHPROX_MAX_CLIENTS="7", PUSHPROX_LISTEN="tcp:8081, :8082",
                     PUSHPROX_LOG_SCRAPES="true", PUSHPROX_NO_METRICS_ENDPOINT="false",
                     PUSHPROX_SCRAPE_MAX_TIMEOUT="2m", PUSHPROX_SCRAPE_ALLOW_CIDR="10.0.0.0/8")
        options = parse(proxy_tap.Options, [])
        self.assertEqual(
            (options["max-clients"], options["listen"], options["log-scrapes"],
             options["no-metrics-endpoint"], options["scrape-max-timeout"]),
            (7, ["tcp:8081", "tcp:8082"], 1, 0, 120.0))
        self.assertEqual(options.setup().scrape_networks, (ip_network("10.0.0.0/8"),))

    def test_client_flags_and_upstream_variables(self) -> None:
        """PUSHPROX_ALLOW_ANY, repeatable ports, and upstream images' FQDN and PROXY_URL."""
        self.environ(FQDN="node9.example", PROXY_URL="http://proxy:8080",
                     PUSHPROX_ALLOW_ANY="yes", PUSHPROX_ALLOW_PORT="9100,9182",
                     PUSHPROX_LABEL="site=berlin,rack=r1")
        config = parse(client_tap.Options, []).config()
        self.assertEqual(
            (config.fqdn, config.proxy_url, config.allow_any, config.allow_ports, config.labels),
            ("node9.example", "http://proxy:8080", True, frozenset({9100, 9182}),
             (("site", "berlin"), ("rack", "r1"))))

    def test_pushprox_variable_wins_over_its_alias(self) -> None:
        """PUSHPROX_FQDN is read before FQDN."""
        self.environ(FQDN="upstream.example", PUSHPROX_FQDN="ours.example",
                     PROXY_URL="http://proxy/")
        self.assertEqual(parse(client_tap.Options, [])["fqdn"], ["ours.example"])

    def test_command_line_wins(self) -> None:
        """A flag on the command line replaces its variable, repeatable ones included."""
        self.environ(PUSHPROX_MAX_CLIENTS="7", PUSHPROX_PORT="tcp:8081",
                     PUSHPROX_LISTEN="tcp:8082", PUSHPROX_LOG_LEVEL="error")
        options = parse(proxy_tap.Options, ["--max-clients", "9", "--listen", "tcp:9000",
                                            "--log.level=info"])
        self.assertEqual((options["max-clients"], options["listen"], options["log-level"]),
                         (9, ["tcp:9000"], "info"))

    def test_malformed_values_name_the_variable(self) -> None:
        """Each kind of option: the variable and its value, then why; not the flag."""
        for variables, message in [
            ({"PUSHPROX_MAX_CLIENTS": "many"},
             "PUSHPROX_MAX_CLIENTS='many': 'many' is not a whole number"),
            ({"PUSHPROX_LOG_SCRAPES": "perhaps"},
             "PUSHPROX_LOG_SCRAPES='perhaps': expected true or false"),
            ({"PUSHPROX_LISTEN": "tcp:1,:0"},
             "PUSHPROX_LISTEN='tcp:1,:0': port 0 is out of range (1-65535)"),
            ({"PUSHPROX_LOG_FORMAT": "xml"},
             "PUSHPROX_LOG_FORMAT='xml': expected one of logfmt, json, text"),
            ({"PUSHPROX_CLIENT_TOKENS": "/nonexistent/tokens"},
             "PUSHPROX_CLIENT_TOKENS='/nonexistent/tokens': No such file or directory"),
        ]:
            self.environ(**variables)
            error = self.assertRaises(usage.UsageError, parse, proxy_tap.Options, [])
            self.assertEqual(str(error), message)
        for variables, message in [
            ({"PUSHPROX_ALLOW_PORT": "9100,http", "PROXY_URL": "http://proxy/"},
             "PUSHPROX_ALLOW_PORT='9100,http': port 'http' is not a number"),
            ({"PROXY_URL": "proxy:8080"},
             "PROXY_URL='proxy:8080': not an http:// or https:// URL (e.g. "
             "http://proxy:8080/)"),
            ({"PROXY_URL": "http://proxy:8080/", "FQDN": "node 1"},
             "FQDN='node 1': not a host name (letters, digits, '-', '_' and dots)"),
            ({"PROXY_URL": "http://proxy:8080/", "PUSHPROX_RETRY_INITIAL_WAIT": "1m"},
             "PUSHPROX_RETRY_INITIAL_WAIT exceeds --retry-max-wait"),
        ]:
            self.environ(**variables)
            error = self.assertRaises(usage.UsageError, parse, client_tap.Options, [])
            self.assertEqual(str(error), message)


class TwistdTests(SynchronousTestCase):
    """Under twistd: errors in one line, and the log observer twistd logs to."""

    def setUp(self) -> None:
        self.patch(os, "environ", {})
        self.stderr = StringIO()
        self.patch(sys, "stderr", self.stderr)

    def twistd(self, **options: Any) -> usage.Options:
        parent = usage.Options()
        parent.opts.update({"nodaemon": 1, "logfile": None, "syslog": 0, "logger": None})
        parent.opts.update(options)
        return parent

    def test_usage_error_is_one_line_first(self) -> None:
        """The reason, then where to find the options; no usage dump, no twistd prefix."""
        error = self.assertRaises(SystemExit, parse, proxy_tap.Options, ["--max-clients", "0"],
                                  self.twistd())
        self.assertEqual(error.code, 1)
        self.assertEqual(self.stderr.getvalue().splitlines(), [
            "twistd pushprox-proxy: --max-clients 0: 0 is not a positive integer",
            "(twistd pushprox-proxy --help lists the options)"])

    def test_log_options_give_the_application_an_observer(self) -> None:
        """--log-format json: the application's ILogObserver writes JSON to --logfile."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        twistd = self.twistd(nodaemon=0, logfile=str(directory / "proxy.log"))
        options = parse(proxy_tap.Options, ["--log-format", "json", "--listen",
                                            "tcp:0:interface=127.0.0.1"], twistd)
        service = proxy_tap.makeService(options, reactor=MemoryReactorClock())
        application = Application("pushprox-proxy")
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertTrue(ILogObserver.providedBy(observer))
        observer({"log_format": "hello {fqdn}", "fqdn": "n1", "log_time": 0.0,
                  "log_namespace": "test", "log_level": LEVELS["info"]})
        self.assertEqual((directory / "proxy.log").read_text(),
                         '{"time":"1970-01-01T00:00:00.000Z","level":"info","logger":"test",'
                         '"message":"hello n1","fqdn":"n1"}\n')

    def test_without_log_options_twistd_logs_as_always(self) -> None:
        """No --log-level or --log-format: no component, twistd's own observer."""
        options = parse(proxy_tap.Options, ["--listen", "tcp:0:interface=127.0.0.1"],
                        self.twistd())
        application = Application("pushprox-proxy")
        proxy_tap.makeService(options, reactor=MemoryReactorClock()).setServiceParent(
            application)
        self.assertIsNone(application.getComponent(ILogObserver))

    def test_log_options_refuse_another_observer(self) -> None:
        """twistd --syslog or --logger with --log-format: one line saying so."""
        for twistd in (self.twistd(syslog=1), self.twistd(logger=lambda: None)):
            self.assertRaises(SystemExit, parse, proxy_tap.Options, ["--log-format", "json"],
                              twistd)
        self.assertIn("give one or the other", self.stderr.getvalue())


class StartupErrorTests(SynchronousTestCase):
    """A port in use is one line naming the flag, not a traceback."""

    def setUp(self) -> None:
        self.patch(os, "environ", {})

    def reactor(self) -> RaisingMemoryReactor:
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        return _RaisingReactorClock(listenException=error)

    def test_port_in_use_names_the_flag(self) -> None:
        """The StartupError says --listen, the endpoint, the address and the reason."""
        options = parse(proxy_tap.Options, ["--listen", "tcp:8080:interface=127.0.0.1"])
        service = proxy_tap.makeService(options, reactor=self.reactor())
        error = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertEqual(str(error), "--listen tcp:8080:interface=127.0.0.1: cannot listen "
                                     "on 127.0.0.1:8080: Address already in use")

    def test_other_listen_errors_name_the_flag(self) -> None:
        """A unix: socket's lock file that cannot be made: one line, the flag, the reason."""
        directory = tempfile.mkdtemp(prefix="pushprox-program-")
        self.addCleanup(shutil.rmtree, directory)
        description = f"unix:{directory}/proxy.sock"
        options = parse(proxy_tap.Options, ["--listen", description])
        reactor = _RaisingReactorClock(
            listenException=FileNotFoundError(2, "No such file or directory"))
        service = proxy_tap.makeService(options, reactor=reactor)
        error = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertEqual(str(error), f"--listen {description}: cannot listen: No such file "
                                     "or directory")

    def test_client_metrics_port_in_use_names_its_flag(self) -> None:
        """The client's --metrics-listen, given as upstream's --metrics-addr."""
        options = parse(client_tap.Options, [*CLIENT, "--metrics-addr", "127.0.0.1:8080"])
        service = client_tap.makeService(options, reactor=self.reactor())
        [listener] = [c for c in IServiceCollection(service) if isinstance(c, FlagListener)]
        error = self.assertRaises(StartupError, listener.privilegedStartService)
        self.assertTrue(str(error).startswith(
            "--metrics-listen tcp:8080:interface=127.0.0.1: cannot listen"))

    def test_in_the_foreground_twistd_exits_with_the_line(self) -> None:
        """Under twistd -n the error is written once to the terminal, exit status 1."""
        stderr = StringIO()
        self.patch(sys, "__stderr__", stderr)
        service = ProgramService(exit_on_startup_error=True)
        FlagListener("listen", "tcp:8080", object(), self.reactor()).setServiceParent(service)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue(), "twistd: --listen tcp:8080: cannot listen on "
                                            "127.0.0.1:8080: Address already in use\n")

    def test_outside_twistd_the_service_has_no_observer(self) -> None:
        """Console scripts log on their own; the service leaves logging alone."""
        options = parse(proxy_tap.Options, ["--log-format", "json"])
        self.assertIsInstance(program_service(options), ProgramService)
        application = Application("x")
        program_service(options).setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver))
