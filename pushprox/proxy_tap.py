# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-proxy``: command-line options and the service they make."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python import usage

from pushprox.coordinator import Coordinator
from pushprox.proxy import ProxyConfig, PushProxSite


def positive_float(value: str) -> float:
    """Parse a positive number of seconds."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value} is not a positive number")
    return number


def positive_int(value: str) -> int:
    """Parse a positive integer."""
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


class Options(usage.Options):
    """Options of ``twistd pushprox-proxy``."""

    synopsis = "[options]"
    longdesc = (
        "Relays Prometheus scrapes (use this proxy as proxy_url) to PushProx clients "
        "that poll it from behind NAT or firewalls."
    )
    optFlags = [
        ["log-scrapes", None, "Log one line per proxied scrape (default: only errors)."],
    ]
    defaults = ProxyConfig()
    optParameters: list[list[Any]] = [
        ["scrape-default-timeout", None, defaults.scrape_default_timeout,
         "Scrape timeout in seconds when Prometheus sends none.",
         positive_float],
        ["scrape-max-timeout", None, defaults.scrape_max_timeout,
         "Largest scrape timeout in seconds; longer ones are cut to it.",
         positive_float],
        ["registration-timeout", None, 300.0,
         "Seconds after its last poll that a client stays registered.",
         positive_float],
        ["poll-max-timeout", None, defaults.poll_max_timeout,
         "Longest time in seconds that the proxy holds an idle poll when a client "
         "asks for a bounded poll.", positive_float],
        ["max-push-size", None, defaults.max_push_size,
         "Largest push body (a target's whole response) in bytes.",
         positive_int],
        ["max-request-size", None, defaults.max_request_size,
         "Largest body of any other request in bytes.", positive_int],
        ["max-header-size", None, defaults.max_header_size,
         "Largest request line plus headers of a request in bytes.",
         positive_int],
        ["max-queued-scrapes", None, 100,
         "Scrapes queued per client while it has no poll waiting.",
         positive_int],
        ["max-clients", None, 100_000, "Registered clients.", positive_int],
        ["max-polls-per-client", None, 16,
         "Polls one FQDN may hold open at once.", positive_int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to serve on, in Twisted syntax (repeatable; default tcp:8080)."""
        self["listen"].append(endpoint)

    def opt_port(self, endpoint: str) -> None:
        """The same as --listen (repeatable)."""
        self.opt_listen(endpoint)

    def postOptions(self) -> None:
        """Fill in the default endpoint."""
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["scrape-default-timeout"] > self["scrape-max-timeout"]:
            raise usage.UsageError("--scrape-default-timeout exceeds --scrape-max-timeout")

    def config(self) -> ProxyConfig:
        """The proxy configuration these options describe."""
        return ProxyConfig(
            scrape_default_timeout=self["scrape-default-timeout"],
            scrape_max_timeout=self["scrape-max-timeout"],
            poll_max_timeout=self["poll-max-timeout"],
            max_push_size=self["max-push-size"],
            max_request_size=self["max-request-size"],
            max_header_size=self["max-header-size"],
            log_scrapes=self["log-scrapes"],
        )


class CoordinatorService(Service):
    """Answers everything still waiting with 503 when the proxy stops."""

    def __init__(self, coordinator: Coordinator, clock: IReactorTime) -> None:
        self._coordinator = coordinator
        self._clock = clock

    def stopService(self) -> Deferred[None]:
        """Fail pending scrapes and polls, then give their answers time to leave."""
        super().stopService()
        self._coordinator.shutdown()
        return deferLater(self._clock, 0.2, lambda: None)


def makeService(options: Options, reactor: Any = None) -> IService:
    """The proxy: a coordinator and one site on every ``--listen`` endpoint."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    coordinator = Coordinator(
        reactor,
        registration_timeout=options["registration-timeout"],
        max_queued_per_client=options["max-queued-scrapes"],
        max_clients=options["max-clients"],
        max_polls_per_client=options["max-polls-per-client"],
    )
    site = PushProxSite(coordinator, clock=reactor, config=options.config())
    service = MultiService()
    # Added first so that it stops last: the ports close before pending answers go.
    CoordinatorService(coordinator, reactor).setServiceParent(service)
    for endpoint in options["listen"]:
        strports.service(endpoint, site, reactor=reactor).setServiceParent(service)
    return service
