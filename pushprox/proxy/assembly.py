# -*- test-case-name: tests.test_taps -*-
"""
The proxy's service, assembled in one order from values.

``assemble`` builds a single proxy and a cluster replica alike: the metrics, the
coordinator, the authentication, the site, the listeners, the files re-read without a
restart, and the watchers, each once.  What a replica does differently (its coordinator,
its peers, its heartbeat, its drain on stop) comes through one seam, a ``ProxyVariant``,
whose coordinator is an ``ICoordinator``.  ``pushprox.proxy.cluster`` is imported only
when the settings name a Redis (``--redis``).

The values come from the options (``pushprox.proxy.tap``), which read and check them:
``ProxyConfig`` for what the running proxy reads, ``ProxySetup`` for what it is built
from.  Objects (authentication, listeners, services) are made here, never by the options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import LogPublisher, globalLogPublisher

from pushprox.proxy.coordinator import Coordinator, ICoordinator
from pushprox.proxy.push import PushForwarder
from pushprox.proxy.site import PushProxSite
from pushprox.shared.auth import (
    ClientAuth,
    IPNetwork,
    PasswordChecker,
    PeerAuth,
    ScraperAuth,
    load_htpasswd,
)
from pushprox.shared.config import ProxyConfig
from pushprox.shared.metrics import ProxyMetrics
from pushprox.shared.program import (
    ProgramService,
    TLSSettings,
    reload_services,
    serve_site,
    web_headers,
)
from pushprox.shared.reload import Reloader
from pushprox.shared.twisted_internals import AcceptFailureObserver, AcceptFailures
from pushprox.shared.web_config import WebConfig


@dataclass(frozen=True)
class ClusterSetup:
    """Cluster mode's settings (``--redis`` and the flags that go with it), checked."""

    redis_url: str
    peer_url: str
    peer_token: str = field(repr=False)
    redis_password: str | None = field(default=None, repr=False)
    redis_ca_file: str | None = None


@dataclass(frozen=True)
class ProxySetup:
    """
    What the proxy is built from beside ``ProxyConfig``: where it listens, who may use
    it, and cluster mode, as values read and checked from the options and their files.
    """

    #: Server endpoint descriptions (``--listen``).
    listen: tuple[str, ...] = ("tcp:8080",)
    #: The listeners' TLS versions and cipher suites (flags and web configuration file).
    tls: TLSSettings = field(default_factory=TLSSettings)
    #: The web configuration file (``--web-config-file``) and what it says.
    web_config_file: str | None = None
    web: WebConfig | None = None
    #: CA bundle that clients' certificates must chain to (``--client-ca``).
    client_ca: str | None = None
    #: The client token file (``--client-tokens``, re-read on SIGHUP) and its tokens
    #: (token → FQDN or ``*``).
    client_tokens_file: str | None = None
    client_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The scrapers' htpasswd file (``--scrape-auth``, re-read on SIGHUP) and its users.
    scrape_auth_file: str | None = None
    scrape_passwords: Mapping[str, bytes] | None = field(default=None, repr=False)
    #: Networks allowed to scrape (``--scrape-allow-cidr``).
    scrape_networks: tuple[IPNetwork, ...] = ()
    clients_endpoint: bool = True
    metrics_endpoint: bool = True
    #: Seconds between looks for renewed files (0: only on SIGHUP).
    reload_interval: float = 10.0
    #: Cluster mode, or None for a single proxy.
    cluster: ClusterSetup | None = None


class ProxyVariant(Protocol):
    """What a single proxy and a cluster replica do differently: the one seam between them."""

    #: The coordinator the site serves from.
    coordinator: ICoordinator
    #: Who is another replica (None: nobody is).
    peer_auth: PeerAuth | None
    #: Where a push for a scrape another replica holds goes (None: nowhere).
    push_forwarder: PushForwarder | None

    def add_services(self, service: MultiService, site: PushProxSite) -> MultiService:
        """
        Add this variant's services to ``service`` around the listeners, in the order
        they start (they stop in reverse), and return the service the listeners join.
        """


class SingleProxy:
    """A proxy on its own: a ``Coordinator`` that answers what waits with 503 on stop."""

    peer_auth: PeerAuth | None = None
    push_forwarder: PushForwarder | None = None

    def __init__(self, reactor: Any, config: ProxyConfig) -> None:
        self.local = Coordinator(reactor, config)
        self.coordinator: ICoordinator = self.local
        self._reactor = reactor

    def add_services(self, service: MultiService, site: PushProxSite) -> MultiService:
        """The coordinator's service first, so that it stops last: the ports close before
        pending answers go."""
        CoordinatorService(self.local, self._reactor).setServiceParent(service)
        listeners = MultiService()
        listeners.setServiceParent(service)
        return listeners


def variant(reactor: Any, config: ProxyConfig, metrics: ProxyMetrics,
            cluster: ClusterSetup | None) -> ProxyVariant:
    """A single proxy, or a cluster replica when ``cluster`` is given."""
    if cluster is None:
        return SingleProxy(reactor, config)
    # Imported only in cluster mode: nothing of it is loaded without --redis.
    from pushprox.proxy.cluster.service import ClusterReplica

    return ClusterReplica(reactor, config, metrics, redis_url=cluster.redis_url,
                          redis_password=cluster.redis_password,
                          redis_ca_file=cluster.redis_ca_file, peer_url=cluster.peer_url,
                          peer_token=cluster.peer_token)


def _certificate_names_fqdn(names: list[str], fqdn: str) -> bool:
    """``pushprox.shared.tls.certificate_names_fqdn``, imported when first needed: a proxy
    without TLS never loads it (``pushprox.shared.footprint``)."""
    from pushprox.shared.tls import certificate_names_fqdn

    return certificate_names_fqdn(names, fqdn)


def client_auth(setup: ProxySetup) -> ClientAuth:
    """Who may poll and push: ``--client-tokens`` and ``--client-ca``."""
    return ClientAuth(token_file=setup.client_tokens_file, tokens=setup.client_tokens,
                      require_certificate=bool(setup.client_ca),
                      names_fqdn=_certificate_names_fqdn)


def scraper_auth(setup: ProxySetup) -> ScraperAuth:
    """Who may scrape and read the proxy's own endpoints."""
    users = setup.web.users if setup.web is not None else None
    return ScraperAuth(
        networks=setup.scrape_networks,
        passwords=(PasswordChecker(dict(setup.scrape_passwords))
                   if setup.scrape_passwords is not None else None),
        endpoint_passwords=PasswordChecker(dict(users)) if users else None)


def assemble(config: ProxyConfig, setup: ProxySetup, reactor: Any,
             service: ProgramService) -> ProgramService:
    """The proxy ``config`` and ``setup`` describe, as children of ``service``."""
    metrics = ProxyMetrics()
    proxy = variant(reactor, config, metrics, setup.cluster)
    clients = client_auth(setup)
    scrapers = scraper_auth(setup)
    site = PushProxSite(
        proxy.coordinator,
        clock=reactor,
        config=config,
        metrics=metrics,
        client_auth=clients,
        scraper_auth=scrapers,
        clients_endpoint=setup.clients_endpoint,
        metrics_endpoint=setup.metrics_endpoint,
        peer_auth=proxy.peer_auth,
        push_forwarder=proxy.push_forwarder,
        headers=web_headers(setup.web) if setup.web is not None else None,
    )
    listeners = proxy.add_services(service, site)
    reloader = Reloader()
    serve_site(listeners, "listen", setup.listen, site, reactor, reloader, tls=setup.tls,
               web=setup.web, web_config_file=setup.web_config_file, auth=scrapers,
               headers=site.headers, client_ca=setup.client_ca)
    if setup.client_tokens_file:
        reloader.register("--client-tokens", clients.reload)
    if setup.scrape_auth_file:
        path = setup.scrape_auth_file
        reloader.register("--scrape-auth", lambda: scrapers.replace_passwords(
            PasswordChecker(load_htpasswd(path))))
    WatchAcceptFailures(site.refusals).setServiceParent(service)
    reload_services(service, reloader, reactor, setup.reload_interval)
    return service


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


class WatchAcceptFailures(Service):
    """While running, tells ``failures`` of connections the listening ports refused."""

    def __init__(self, failures: AcceptFailures,
                 publisher: LogPublisher = globalLogPublisher) -> None:
        self._observer = AcceptFailureObserver(failures)
        self._publisher = publisher

    def startService(self) -> None:
        """Watch the log events of the listening ports."""
        super().startService()
        self._publisher.addObserver(self._observer)

    def stopService(self) -> None:
        """Stop watching."""
        super().stopService()
        self._publisher.removeObserver(self._observer)
