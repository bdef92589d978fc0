# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-proxy``: command-line options and the service they make."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import LogPublisher, globalLogPublisher
from twisted.python import usage

from pushprox.proxy.coordinator import Coordinator, ICoordinator
from pushprox.proxy.site import PushProxSite
from pushprox.shared.auth import (
    MIN_TOKEN_LENGTH,
    ClientAuth,
    PasswordChecker,
    ScraperAuth,
    load_htpasswd,
    parse_networks,
)
from pushprox.shared.config import ProxyConfig, option_values, twistd_flags, twistd_parameters
from pushprox.shared.metrics import ProxyMetrics
from pushprox.shared.options import (
    checked_listen_endpoint,
    http_url,
    naming,
    pem_certificates,
    read_secret,
    readable_file,
)
from pushprox.shared.program import (
    ProgramOptions,
    WebConfigReload,
    add_listener,
    one_line_errors,
    program_service,
    reload_services,
    tls_description,
    tls_settings,
    upstream_names,
    web_headers,
)
from pushprox.shared.reload import Reloader
from pushprox.shared.twisted_internals import AcceptFailureObserver, AcceptFailures
from pushprox.shared.web_config import WebConfig, load_web_config


def _network(value: str) -> str:
    """Parse a CIDR network (``10.0.0.0/8``, ``::1/128``)."""
    parse_networks([value])
    return value


def _redis_url(value: str) -> str:
    """Parse a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL."""
    # Imported only when --redis is given: nothing of cluster mode is loaded without it.
    from pushprox.proxy.cluster.routes import RedisAddress

    RedisAddress.from_url(value)
    return value


def _certificate_names_fqdn(names: list[str], fqdn: str) -> bool:
    """``pushprox.shared.tls.certificate_names_fqdn``, imported when first needed: a proxy without
    TLS never loads it (``pushprox.shared.footprint``)."""
    from pushprox.shared.tls import certificate_names_fqdn

    return certificate_names_fqdn(names, fqdn)


class Options(ProgramOptions):
    """Options of ``twistd pushprox-proxy`` and of the ``pushprox-proxy`` command."""

    program = "pushprox-proxy"
    upstream_flags = upstream_names(
        "scrape.max-timeout", "scrape.default-timeout", "registration.timeout",
        "web.config.file", renamed={"web.listen-address": "listen"})
    same_as = {"port": "listen"}
    sibling = "pushprox.client.tap.Options"
    synopsis = ("[--listen ENDPOINT]... [--client-tokens FILE] [--scrape-auth FILE] "
                "[options]")
    longdesc = (
        "Relays Prometheus scrapes (use this proxy as proxy_url) to PushProx clients "
        "that poll it from behind NAT or firewalls."
    )
    optFlags = [
        ["no-clients-endpoint", None,
         "Do not serve /clients, nor the status page / and /api/v1/clients."],
        ["no-metrics-endpoint", None, "Do not serve /metrics."],
        *twistd_flags(ProxyConfig),
    ]
    optParameters: list[list[Any]] = [
        *twistd_parameters(ProxyConfig),
        ["client-ca", None, None, "CA bundle (PEM): clients must present a certificate "
         "signed by it that names the FQDN they poll as (needs an ssl: --listen).",
         naming("client-ca", pem_certificates)],
        ["client-tokens", None, None, "File of 'fqdn token' lines ('* token' for a shared "
         "one): clients must send one as a Bearer token or basic-auth password. "
         "Re-read on SIGHUP.", naming("client-tokens", readable_file)],
        ["redis", None, None, "Cluster mode: redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// "
         "for TLS), or redis+sentinel://[:PASSWORD@]SENTINEL[:PORT][,SENTINEL...]/NAME[/DB] "
         "for the primary Redis Sentinel names; shared by every replica as the routing "
         "table.", naming("redis", _redis_url)],
        ["redis-ca-file", None, None, "CA bundle (PEM) that a rediss:// server's certificate "
         "must chain to (default: the system's trust store).",
         naming("redis-ca-file", readable_file)],
        ["redis-password-file", None, None, "File holding the Redis password (instead of "
         "one in the --redis URL).", naming("redis-password-file", readable_file)],
        ["peer-url", None, None, "Cluster mode: how the other replicas reach this one "
         "(default: http:// + this host's FQDN + the first tcp: port of --listen).",
         naming("peer-url", http_url)],
        ["peer-token-file", None, None, "Cluster mode: file holding the secret shared by "
         "the replicas (required with --redis).", naming("peer-token-file", readable_file)],
        ["web-config-file", None, None, "Prometheus' web configuration file (exporter-"
         "toolkit's YAML): tls_server_config makes every tcp: listener a TLS one, "
         "basic_auth_users guard /metrics, /clients and the status page, "
         "http_server_config's headers go on their answers. Re-read on SIGHUP.",
         naming("web-config-file", readable_file)],
        ["scrape-auth", None, None, "htpasswd file of bcrypt hashes: scrapers must send "
         "Proxy-Authorization (user:password@ in proxy_url); /clients, /metrics and the "
         "status page then want Authorization. Re-read on SIGHUP.",
         naming("scrape-auth", readable_file)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["scrape-allow-cidr"] = []

    def opt_scrape_allow_cidr(self, network: str) -> None:
        """Network allowed to scrape and read /clients, /metrics and the status page
        (repeatable)."""
        self["scrape-allow-cidr"].append(naming("scrape-allow-cidr", _network)(network))

    def opt_listen(self, endpoint: str) -> None:
        """Where to serve: a Twisted endpoint (tcp:8080, ssl:8443:...), a port number or
        [HOST]:PORT as upstream's --web.listen-address (repeatable; default tcp:8080)."""
        self["listen"].append(naming("listen", checked_listen_endpoint)(endpoint))

    def opt_port(self, endpoint: str) -> None:
        """The same as --listen (repeatable)."""
        self.opt_listen(endpoint)

    def postOptions(self) -> None:
        """Fill in the default endpoint."""
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["scrape-default-timeout"] > self["scrape-max-timeout"]:
            raise usage.UsageError(f"{self.given_as('scrape-default-timeout')} exceeds "
                                   f"{self.given_as('scrape-max-timeout')}")
        try:
            self["web-config"] = (load_web_config(self["web-config-file"])
                                  if self["web-config-file"] else None)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        web_tls = self["web-config"].tls if self["web-config"] else None
        self["tls-settings"] = tls_settings(self, self["web-config"])
        if self["client-ca"] and not (web_tls or any(e.startswith("ssl:")
                                                     for e in self["listen"])):
            raise usage.UsageError(f"{self.given_as('client-ca')} needs an ssl: endpoint in "
                                   f"{self.given_as('listen')}")
        if self["client-ca"] and web_tls and web_tls.client_ca_file:
            raise usage.UsageError(f"{self.given_as('client-ca')} and the web configuration "
                                   "file's client_ca_file: give the client CA once")
        try:
            self["client-auth"] = ClientAuth(
                token_file=self["client-tokens"],
                require_certificate=bool(self["client-ca"]),
                names_fqdn=_certificate_names_fqdn,
            )
            users = self["web-config"].users if self["web-config"] else None
            self["scraper-auth"] = ScraperAuth(
                networks=parse_networks(self["scrape-allow-cidr"]),
                passwords=(PasswordChecker(load_htpasswd(self["scrape-auth"]))
                           if self["scrape-auth"] else None),
                endpoint_passwords=PasswordChecker(dict(users)) if users else None,
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self._check_cluster()

    def _check_cluster(self) -> None:
        """Cluster mode's options go together: Redis, a peer token, a peer URL."""
        cluster_flags = ("redis-password-file", "redis-ca-file", "peer-url", "peer-token-file")
        if not self["redis"]:
            given = [flag for flag in cluster_flags if self[flag]]
            if given:
                raise usage.UsageError(f"{self.given_as(given[0])} needs --redis")
            return
        if not self["peer-token-file"]:
            raise usage.UsageError("--redis needs --peer-token-file: replicas authenticate "
                                   "each other with it")
        if not self["peer-url"] and self["web-config"] and self["web-config"].tls:
            raise usage.UsageError("--redis with the web configuration file's TLS needs "
                                   "--peer-url (https://...): the tcp: listeners serve TLS")
        self["peer-token"] = read_secret(self["peer-token-file"], "peer-token-file")
        if len(self["peer-token"]) < MIN_TOKEN_LENGTH:
            raise usage.UsageError(
                f"--peer-token-file: the token in {self['peer-token-file']} is shorter than "
                f"{MIN_TOKEN_LENGTH} characters (make one with: head -c 32 /dev/urandom | "
                "base64)")
        self["redis-password"] = read_secret(self["redis-password-file"], "redis-password-file")
        if not self["peer-url"]:
            from pushprox.proxy.cluster.service import default_peer_url

            self["peer-url"] = default_peer_url(self["listen"])
            if self["peer-url"] is None:
                raise usage.UsageError("--redis needs --peer-url when no tcp: port is listened on")
        if self["redis-ca-file"]:
            from pushprox.proxy.cluster.routes import RedisAddress

            try:
                RedisAddress.from_url(self["redis"], ca_file=self["redis-ca-file"])
            except ValueError as error:
                raise usage.UsageError(f"--redis-ca-file: {error}") from None

    def config(self) -> ProxyConfig:
        """The proxy configuration these options describe."""
        return ProxyConfig(**option_values(ProxyConfig, self))


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


@one_line_errors
def makeService(options: Options, reactor: Any = None) -> IService:
    """The proxy: a coordinator and one site on every ``--listen`` endpoint."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.config()
    metrics = ProxyMetrics()
    service = program_service(options)
    listeners = MultiService()
    site_options: dict[str, Any] = {}
    coordinator: ICoordinator
    if options["redis"]:
        # Imported only in cluster mode: nothing of it is loaded without --redis.
        from pushprox.proxy.cluster import service as cluster_service
        from pushprox.shared.auth import PeerAuth

        cluster = cluster_service.build(
            reactor, config, metrics, redis_url=options["redis"],
            redis_password=options["redis-password"], redis_ca_file=options["redis-ca-file"],
            peer_url=options["peer-url"],
            peer_token=options["peer-token"])
        coordinator, local = cluster.coordinator, cluster.local
        site_options.update(peer_auth=PeerAuth(options["peer-token"]),
                            push_forwarder=cluster.peers)
        draining = cluster_service.DrainingListeners(cluster, reactor, config.shutdown_grace)
        listeners = draining
    else:
        coordinator = local = Coordinator(reactor, config)
    client_auth: ClientAuth = options["client-auth"]
    site = PushProxSite(
        coordinator,
        clock=reactor,
        config=config,
        metrics=metrics,
        client_auth=client_auth,
        scraper_auth=options["scraper-auth"],
        clients_endpoint=not options["no-clients-endpoint"],
        metrics_endpoint=not options["no-metrics-endpoint"],
        **site_options,
    )
    if options["redis"]:
        site.count_requests = True
        draining.site = site
    if not options["redis"]:
        # Added first so that it stops last: the ports close before pending answers go.
        CoordinatorService(local, reactor).setServiceParent(service)
    # (A replica's DrainingListeners shut its coordinator down once drained.)
    listeners.setServiceParent(service)
    if options["redis"]:
        cluster_service.HeartbeatService(cluster).setServiceParent(service)
    reloader = Reloader()
    web: WebConfig | None = options["web-config"]
    for endpoint in options["listen"]:
        description = tls_description(options["tls-settings"], endpoint,
                                      client_ca=options["client-ca"], web=web)
        add_listener(listeners, "listen", description, site, reactor, reloader=reloader)
    if web is not None:
        site.headers[:] = web_headers(web)
        reloader.register("--web.config.file", WebConfigReload(
            options["web-config-file"], web, site.headers, options["scraper-auth"]).reload)
    WatchAcceptFailures(site.refusals).setServiceParent(service)
    if options["client-tokens"]:
        reloader.register("--client-tokens", client_auth.reload)
    if options["scrape-auth"]:
        scraper_auth: ScraperAuth = options["scraper-auth"]
        path = options["scrape-auth"]
        reloader.register("--scrape-auth", lambda: scraper_auth.replace_passwords(
            PasswordChecker(load_htpasswd(path))))
    reload_services(service, reloader, reactor, options["tls-reload-interval"])
    return service


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

