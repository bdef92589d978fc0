# -*- test-case-name: tests.test_taps -*-
"""
The client's service, assembled from values.

The options (``pushprox.client.tap``) read and check every flag and file into a
``ClientSetup``; ``assemble`` builds from it, in one order: the TLS policies, the
connections to the proxy and to targets (shared by every name), the metrics, a
``ClientRoster`` of one ``ClientService`` per name, the token files re-read on SIGHUP,
and the ``/metrics`` listener.  Objects are made here, never by the options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python import usage

from pushprox.client.names import ClientName
from pushprox.client.outbound_proxy import HttpProxy
from pushprox.client.roster import ClientRoster
from pushprox.client.service import ClientService, make_connections, make_proxy_link
from pushprox.shared.config import ClientConfig
from pushprox.shared.metrics import ClientMetrics
from pushprox.shared.options import read_secret
from pushprox.shared.program import (
    ProgramService,
    TLSSettings,
    reload_services,
    serve_site,
    web_headers,
)
from pushprox.shared.reload import Reloader
from pushprox.shared.web_config import WebConfig

if TYPE_CHECKING:
    from pushprox.shared.tls import ClientTLSPolicy

#: Where the assembly's warnings about the configuration are logged: beside the clients'.
log = Logger(namespace="pushprox.client.service")


@dataclass(frozen=True)
class ClientTLS:
    """The TLS of the client's connections to the proxy (``--tls-*``) or to targets."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure_skip_verify: bool = False
    #: The TLS profile (to the proxy only; targets keep Twisted's defaults, as exporters
    #: may be older than the profile).
    min_version: str | None = None
    cipher_suites: tuple[str, ...] | None = None

    @property
    def given(self) -> bool:
        """Whether any of the files or the insecure switch was given."""
        return bool(self.cacert or self.cert or self.insecure_skip_verify)


@dataclass(frozen=True)
class ClientSetup:
    """
    What the client is built from, as values the options read and checked: the settings
    every name shares, the names, the ways to the proxy and to targets, and the files
    re-read without a restart.
    """

    #: The configuration every name shares (the FQDN and address are each name's).
    shared: ClientConfig
    #: The names of ``--fqdn``, and of ``--targets-file`` when the client starts.
    names: tuple[ClientName, ...]
    file_names: tuple[ClientName, ...] = ()
    #: Whether ``--fqdn`` was left to this host's name (a warning if it is localhost).
    fqdn_guessed: bool = False
    #: The HTTP proxy on the way to each ``--proxy-url``, if any.
    http_proxies: tuple[HttpProxy | None, ...] = ()
    #: The HTTP proxy targets are scraped through, if asked (``--target-http-proxy``).
    target_http_proxy: HttpProxy | None = None
    proxy_tls: ClientTLS = field(default_factory=ClientTLS)
    target_tls: ClientTLS = field(default_factory=ClientTLS)
    targets_file: str | None = None
    proxy_token_file: str | None = None
    target_bearer_token_file: str | None = None
    #: ``--metrics-listen`` (None: off), its TLS settings and the web configuration file.
    metrics_listen: str | None = None
    tls: TLSSettings = field(default_factory=TLSSettings)
    web_config_file: str | None = None
    web: WebConfig | None = None
    #: Seconds between looks for renewed files (0: only on SIGHUP).
    reload_interval: float = 10.0

    def config_for(self, name: ClientName) -> ClientConfig:
        """The configuration of the client of ``name``."""
        return dataclasses.replace(self.shared, fqdn=name.fqdn,
                                   target_host=name.address or self.shared.target_host)

    def configs(self) -> list[ClientConfig]:
        """The configuration of each name (``--fqdn``, then ``--targets-file``), in order."""
        return [self.config_for(name) for name in [*self.names, *self.file_names]]


def _proxy_urls(config: ClientConfig) -> tuple[str, ...]:
    """Every ``--proxy-url``, in order."""
    return config.proxy_urls or (config.proxy_url,)


def _policy(tls_setup: ClientTLS, flags: str, reloader: Reloader, *,
            profile: bool) -> ClientTLSPolicy:
    """The HTTPS policy of ``tls_setup``, its files registered with ``reloader``."""
    from pushprox.shared import tls

    policy = tls.https_policy(
        cacert=tls_setup.cacert, cert=tls_setup.cert, key=tls_setup.key,
        insecure_skip_verify=tls_setup.insecure_skip_verify,
        profile=tls.TLSProfile(
            min_version=tls_setup.min_version or "TLS12",
            cipher_suites=tls_setup.cipher_suites or tls.INTERMEDIATE_CIPHER_SUITES)
        if profile else None)
    if policy.paths:
        reloader.register(flags, policy.reload, watch=policy.paths)
    return policy


def _log_configuration(setup: ClientSetup) -> None:
    """Warn of what the user may not have meant; say which HTTP proxies are used."""
    config = setup.shared
    every = [*setup.names, *setup.file_names]
    if config.allow_any:
        log.warn("--allow-any: this client scrapes any port and path of {fqdn} that the "
                 "proxy asks for", fqdn=", ".join(name.fqdn for name in every))
    for url, http_proxy in zip(_proxy_urls(config), setup.http_proxies, strict=True):
        if http_proxy is None:
            continue
        log.info("The proxy {url} is reached through the HTTP proxy {http_proxy} ({how})",
                 url=config.endpoint("", url).decode("ascii"), http_proxy=http_proxy.shown,
                 how="CONNECT tunnel" if urlsplit(url).scheme == "https"
                 else "absolute-form requests")
    if setup.target_http_proxy is not None:
        log.info("Targets are scraped through the HTTP proxy {http_proxy} (CONNECT tunnels)",
                 http_proxy=setup.target_http_proxy.shown)
    fqdn = every[0].fqdn if every else ""
    if setup.fqdn_guessed and fqdn.lower().split(".")[0] == "localhost":
        log.warn("This host's FQDN is {fqdn}: Prometheus must scrape it as {fqdn}, and two "
                 "such clients would take each other's scrapes; give the name Prometheus "
                 "uses with --fqdn", fqdn=fqdn)


def assemble(setup: ClientSetup, reactor: Any, service: ProgramService) -> ProgramService:
    """
    A client service for each name, plus the ``/metrics`` endpoint when one is
    configured, as children of ``service``.  The names share the connections to the
    proxy and to targets and the metrics; each keeps its own poll, so that any proxy
    sees ordinary clients.
    """
    config = setup.shared
    proxy_urls = _proxy_urls(config)
    reloader = Reloader()
    proxy_policy = target_policy = None
    if urlsplit(config.proxy_url).scheme == "https" or setup.proxy_tls.given:
        proxy_policy = _policy(setup.proxy_tls, "--tls-cacert/--tls-cert/--tls-key",
                               reloader, profile=True)
    if setup.target_tls.given:
        target_policy = _policy(
            setup.target_tls, "--target-tls-cacert/--target-tls-cert/--target-tls-key",
            reloader, profile=False)
    proxy_link, target_link, pools = make_connections(
        reactor, config.endpoint("poll"), proxy_policy=proxy_policy,
        target_policy=target_policy, keepalive=config, http_proxy=setup.http_proxies[0],
        target_http_proxy=setup.target_http_proxy,
    )
    fallback_links = [
        make_proxy_link(reactor, config.endpoint("poll", url), policy=proxy_policy,
                        keepalive=config, http_proxy=http_proxy)
        for url, http_proxy in zip(proxy_urls[1:], setup.http_proxies[1:], strict=True)]
    metrics = ClientMetrics()
    _log_configuration(setup)
    #: The tokens in force, for the names added later too (token files are re-read).
    tokens = {"proxy": config.proxy_token, "target": config.target_bearer_token}

    def make_client(name: ClientName) -> ClientService:
        config = dataclasses.replace(setup.config_for(name), proxy_token=tokens["proxy"],
                                     target_bearer_token=tokens["target"])
        return ClientService(config, reactor=reactor, proxy_link=proxy_link,
                             fallback_links=fallback_links, target_link=target_link,
                             metrics=metrics, owns_connections=False)

    def close_connections() -> Deferred[Any]:
        return DeferredList([proxy_link.close(), *(link.close() for link in fallback_links),
                             target_link.close(),
                             *(pool.closeCachedConnections() for pool in pools)])

    roster = ClientRoster(fixed=list(setup.names), targets_file=setup.targets_file,
                          from_file=list(setup.file_names), make_client=make_client,
                          close_connections=close_connections)
    roster.setServiceParent(service)
    if setup.targets_file:
        reloader.register("--targets-file", roster.reload, watch=[setup.targets_file])
    if setup.proxy_token_file or setup.target_bearer_token_file:

        def use_tokens() -> None:
            tokens["proxy"] = read_token(setup.proxy_token_file, "proxy-token-file")
            tokens["target"] = read_token(setup.target_bearer_token_file,
                                          "target-bearer-token-file")
            for client in roster.clients():
                cast(ClientService, client).use_tokens(proxy_token=tokens["proxy"],
                                                       target_bearer_token=tokens["target"])

        reloader.register("--proxy-token-file/--target-bearer-token-file", use_tokens)
    if setup.metrics_listen:
        _add_metrics_listener(setup, metrics, service, reloader, reactor)
    reload_services(service, reloader, reactor, setup.reload_interval)
    return service


def _add_metrics_listener(setup: ClientSetup, metrics: ClientMetrics,
                          service: ProgramService, reloader: Reloader, reactor: Any) -> None:
    """Serve the client's own ``/metrics`` on ``--metrics-listen``."""
    from pushprox.client.metrics_listener import MetricsListenerFactory, MetricsPage

    assert setup.metrics_listen is not None
    web = setup.web
    auth = None
    headers: list[tuple[bytes, bytes]] = []
    page = MetricsPage(metrics.registry)
    if web is not None:
        from pushprox.shared.auth import PasswordChecker, ScraperAuth

        auth = ScraperAuth(endpoint_passwords=PasswordChecker(dict(web.users))
                           if web.users else None)
        headers = web_headers(web)
        # Users added when the file is re-read apply at the next start (WebConfigReload).
        page = MetricsPage(metrics.registry, auth=auth if web.users else None,
                           headers=headers)
    serve_site(service, "metrics-listen", [setup.metrics_listen],
               MetricsListenerFactory(page, reactor), reactor, reloader, tls=setup.tls,
               web=web, web_config_file=setup.web_config_file, auth=auth, headers=headers)


def read_token(path: str | None, flag: str) -> str | None:
    """``read_secret`` for a reload: a bad file is a ValueError, not a usage error."""
    try:
        return read_secret(path, flag)
    except usage.UsageError as error:
        raise ValueError(str(error)) from None
