# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-client``: command-line options and the service they make."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList
from twisted.python import usage

from pushprox.client.names import ClientName, check_unique, parse_client_name
from pushprox.client.outbound_proxy import HttpProxy, choose_http_proxy, parse_http_proxy
from pushprox.client.roster import ClientRoster, read_targets_file
from pushprox.client.service import ClientService, make_connections, make_proxy_link
from pushprox.shared import wire
from pushprox.shared.config import (
    ClientConfig,
    default,
    option_values,
    twistd_flags,
    twistd_parameters,
)
from pushprox.shared.metrics import ClientMetrics
from pushprox.shared.options import (
    OptionValueError,
    http_url,
    key_matches_certificate,
    naming,
    optional_listen_endpoint,
    pem_certificates,
    pem_private_key,
    port_number,
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
from pushprox.shared.web_config import WebConfig, load_web_config


class Options(ProgramOptions):
    """Options of ``twistd pushprox-client`` and of the ``pushprox-client`` command."""

    program = "pushprox-client"
    upstream_flags = upstream_names("tls.cacert", "tls.cert", "tls.key", "web.config.file",
                                    renamed={
        "metrics-addr": "metrics-listen", "proxy.retry.initial-wait": "retry-initial-wait",
        "proxy.retry.max-wait": "retry-max-wait"})
    #: The variables upstream's client images read.
    environment_aliases = {"FQDN": "fqdn", "PROXY_URL": "proxy-url"}
    sibling = "pushprox.proxy.tap.Options"
    synopsis = ("--proxy-url URL [--fqdn NAME] [--allow-port PORT]... "
                "[--tls-cacert FILE] [options]")
    longdesc = (
        "Polls a PushProx proxy, scrapes the local targets it asks for and pushes "
        "their answers back. Only outbound connections are made."
    )
    optFlags = [
        *twistd_flags(ClientConfig),
        ["tls-insecure-skip-verify", None,
         "Do not verify the proxy's certificate (testing only)."],
        ["target-tls-insecure-skip-verify", None,
         "Do not verify HTTPS targets' certificates."],
        ["ignore-proxy-environment", None,
         "Reach the proxy directly whatever HTTP_PROXY, HTTPS_PROXY and NO_PROXY say."],
    ]
    optParameters: list[list[Any]] = [
        *twistd_parameters(ClientConfig),
        ["http-proxy", None, None, "HTTP proxy to reach the proxy through, "
         "http://[USER:PASSWORD@]HOST:PORT, instead of HTTP_PROXY/HTTPS_PROXY (default: "
         "those, as Go's net/http reads them; NO_PROXY applies to both; targets are "
         "always scraped directly)."],
        ["target-http-proxy", None, None, "HTTP proxy to scrape targets through, "
         "http://[USER:PASSWORD@]HOST:PORT, in a CONNECT tunnel per connection (default: "
         "none, targets are scraped directly; the proxy variables never apply to them)."],
        ["targets-file", None, None, "File of names this client registers, one "
         "NAME[=ADDRESS] a line as for --fqdn ('#' comments); re-read on SIGHUP and when it "
         "changes: new names register, removed ones stop polling at once, a bad file "
         "changes nothing.", naming("targets-file", readable_file)],
        ["tls-cacert", None, None, "CA bundle (PEM) to verify the proxy's certificate.",
         naming("tls-cacert", pem_certificates)],
        ["tls-cert", None, None, "Client certificate (PEM) presented to the proxy.",
         naming("tls-cert", pem_certificates)],
        ["tls-key", None, None, "Key (PEM) of --tls-cert.", naming("tls-key", pem_private_key)],
        ["target-tls-cacert", None, None, "CA bundle (PEM) to verify HTTPS targets.",
         naming("target-tls-cacert", pem_certificates)],
        ["target-tls-cert", None, None, "Client certificate (PEM) presented to targets.",
         naming("target-tls-cert", pem_certificates)],
        ["target-tls-key", None, None, "Key (PEM) of --target-tls-cert.",
         naming("target-tls-key", pem_private_key)],
        ["proxy-token-file", None, None, "File holding the token sent to the proxy as "
         "'Authorization: Bearer' (its --client-tokens).",
         naming("proxy-token-file", readable_file)],
        ["target-bearer-token-file", None, None, "File holding a token sent to targets as "
         "'Authorization: Bearer' (never to the proxy).",
         naming("target-bearer-token-file", readable_file)],
        ["web-config-file", None, None, "Prometheus' web configuration file (exporter-"
         "toolkit's YAML) for --metrics-listen: tls_server_config makes a tcp: listener a "
         "TLS one, basic_auth_users guard /metrics, http_server_config's headers go on its "
         "answers. Re-read on SIGHUP.", naming("web-config-file", readable_file)],
        ["metrics-listen", None, "tcp:9369", "Endpoint serving the client's own /metrics: "
         "a Twisted endpoint, a port number or [HOST]:PORT as upstream's --metrics-addr; "
         "empty to disable.", naming("metrics-listen", optional_listen_endpoint)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow-port"] = []
        self["allow-path"] = []
        self["label"] = []
        self["fqdn"] = []
        self["proxy-url"] = []
        #: The names to register and where each is scraped, from --fqdn.
        self.names: list[ClientName] = []
        #: The names of --targets-file when the client starts.
        self.file_names: list[ClientName] = []
        #: Whether --fqdn was left to this host's name (a warning if it is localhost).
        self.fqdn_guessed = False
        #: The HTTP proxy on the way to each --proxy-url, if any (--http-proxy, environment).
        self.http_proxies: list[HttpProxy | None] = []
        #: The HTTP proxy targets are scraped through, if asked (--target-http-proxy).
        self.target_http_proxy: HttpProxy | None = None

    def opt_label(self, value: str) -> None:
        """Label NAME=VALUE that the proxy lists this client with in /clients (repeatable)."""
        name, equals, label_value = value.partition("=")
        if not equals:
            raise usage.UsageError(f"--label {value}: expected NAME=VALUE")
        try:
            wire.check_label(name, label_value)
        except wire.WireError as error:
            raise usage.UsageError(f"--label {value}: {error}") from None
        self["label"].append((name, label_value))

    def opt_proxy_url(self, value: str) -> None:
        """Proxy URL, e.g. http://[user:token@]proxy:8080/ (required; repeatable: failover)."""
        url = naming("proxy-url", http_url)(value)
        if url in self["proxy-url"]:
            raise OptionValueError(f"--proxy-url {value} is given twice",
                                   reason=f"{value} is given twice")
        self["proxy-url"].append(url)

    def opt_fqdn(self, value: str) -> None:
        """Name NAME[=ADDRESS] to register, scraped at ADDRESS (repeatable; default: this host)."""
        try:
            self.names.append(parse_client_name(value))
        except ValueError as error:
            raise OptionValueError(f"--fqdn {value}: {error}", reason=str(error)) from None
        self["fqdn"].append(self.names[-1].fqdn)

    def opt_allow_port(self, value: str) -> None:
        """Target port the client may scrape (repeatable; default 9100)."""
        try:
            self["allow-port"].append(port_number(value))
        except ValueError as error:
            raise OptionValueError(f"--allow-port: {error}", reason=str(error)) from None

    def opt_allow_path(self, value: str) -> None:
        """Target path the client may scrape (repeatable; default /metrics)."""
        if not value.startswith("/"):
            raise usage.UsageError(f"--allow-path: {value} does not start with /")
        self["allow-path"].append(value)

    def postOptions(self) -> None:
        """Check the combination of options."""
        if not self["proxy-url"]:
            raise usage.UsageError("--proxy-url is required, e.g. --proxy-url http://proxy:8080/")
        try:
            self.http_proxies = [
                choose_http_proxy(url, os.environ, explicit=self["http-proxy"],
                                  use_environment=not self["ignore-proxy-environment"])
                for url in self["proxy-url"]]
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["target-http-proxy"]:
            try:
                self.target_http_proxy = parse_http_proxy(self["target-http-proxy"])
            except ValueError as error:
                raise usage.UsageError(f"--target-http-proxy: {error}") from None
        for prefix in ("tls", "target-tls"):
            cert, key = f"{prefix}-cert", f"{prefix}-key"
            if bool(self[cert]) != bool(self[key]):
                raise usage.UsageError(
                    f"{self.given_as(cert)} and {self.given_as(key)} go together")
            if self[cert] and not key_matches_certificate(self[cert], self[key]):
                raise usage.UsageError(
                    f"{self.given_as(key)} {self[key]} is not the key of "
                    f"{self.given_as(cert)} {self[cert]}")
        if self["targets-file"]:
            try:
                self.file_names = read_targets_file(self["targets-file"])
            except ValueError as error:
                raise usage.UsageError(f"--targets-file {self['targets-file']}: {error}") from None
        self.fqdn_guessed = not self.names and not self["targets-file"]
        if self.fqdn_guessed:
            # Looked up only when needed: a slow resolver must not delay --help.
            guessed = socket.getfqdn()
            try:
                self.names.append(parse_client_name(guessed))
            except ValueError:
                raise usage.UsageError(
                    f"this host's name {guessed!r} is not a host name Prometheus can "
                    "scrape; give the name it uses with --fqdn") from None
            self["fqdn"].append(guessed)
        try:
            check_unique(self.names)
        except ValueError as error:
            raise usage.UsageError(f"{self.given_as('fqdn')} {error}") from None
        try:
            check_unique([*self.names, *self.file_names])
        except ValueError as error:
            raise usage.UsageError(
                f"--targets-file {self['targets-file']}: {error} (with --fqdn)") from None
        if self["retry-initial-wait"] > self["retry-max-wait"]:
            raise usage.UsageError(f"{self.given_as('retry-initial-wait')} exceeds "
                                   f"{self.given_as('retry-max-wait')}")
        for name in ("proxy-token-file", "target-bearer-token-file"):
            self[name.removesuffix("-file")] = read_secret(self[name], name)
        try:
            self["web-config"] = (load_web_config(self["web-config-file"])
                                  if self["web-config-file"] else None)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["web-config"] is not None and not self["metrics-listen"]:
            raise usage.UsageError("--web.config.file is for --metrics-listen, which is off")
        self["tls-settings"] = tls_settings(self, self["web-config"])

    def configs(self) -> list[ClientConfig]:
        """The configuration of each name (--fqdn, then --targets-file), in order."""
        return [self.config_for(name) for name in [*self.names, *self.file_names]]

    def config(self) -> ClientConfig:
        """The configuration of the first name (an empty FQDN when there is none yet)."""
        every = [*self.names, *self.file_names]
        return self.config_for(every[0] if every else ClientName(""))

    def config_for(self, name: ClientName) -> ClientConfig:
        """The configuration of the client of ``name``."""
        return ClientConfig(
            proxy_url=self["proxy-url"][0],
            proxy_urls=tuple(self["proxy-url"]) if len(self["proxy-url"]) > 1 else (),
            fqdn=name.fqdn,
            allow_ports=frozenset(self["allow-port"]) or default(ClientConfig, "allow_ports"),
            allow_paths=frozenset(self["allow-path"]) or default(ClientConfig, "allow_paths"),
            proxy_token=self["proxy-token"],
            target_bearer_token=self["target-bearer-token"],
            labels=tuple(self["label"]),
            **{**option_values(ClientConfig, self),
               **({"target_host": name.address} if name.address else {})},
        )


@one_line_errors
def makeService(options: Options, reactor: Any = None) -> IService:
    """
    A client service for each name (--fqdn), plus the /metrics endpoint when one is
    configured.  The names share the connections to the proxy and to targets and the
    metrics; each keeps its own poll, so that any proxy sees ordinary clients.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.config()
    reloader = Reloader()
    proxy_policy = target_policy = None
    if urlsplit(config.proxy_url).scheme == "https" or any(
            options[k] for k in ("tls-cacert", "tls-cert", "tls-insecure-skip-verify")):
        from pushprox.shared import tls

        proxy_policy = tls.https_policy(
            cacert=options["tls-cacert"], cert=options["tls-cert"], key=options["tls-key"],
            insecure_skip_verify=options["tls-insecure-skip-verify"],
            profile=tls.TLSProfile(
                min_version=options["tls-min-version"] or "TLS12",
                cipher_suites=options["tls-cipher-suites"] or tls.INTERMEDIATE_CIPHER_SUITES),
        )
        if proxy_policy.paths:
            reloader.register("--tls-cacert/--tls-cert/--tls-key", proxy_policy.reload,
                              watch=proxy_policy.paths)
    if any(options[k] for k in ("target-tls-cacert", "target-tls-cert",
                                "target-tls-insecure-skip-verify")):
        from pushprox.shared import tls

        # Targets keep Twisted's defaults: exporters may be older than the profile.
        target_policy = tls.https_policy(
            cacert=options["target-tls-cacert"], cert=options["target-tls-cert"],
            key=options["target-tls-key"],
            insecure_skip_verify=options["target-tls-insecure-skip-verify"],
        )
        if target_policy.paths:
            reloader.register("--target-tls-cacert/--target-tls-cert/--target-tls-key",
                              target_policy.reload, watch=target_policy.paths)
    proxy_link, target_link, pools = make_connections(
        reactor, config.endpoint("poll"), proxy_policy=proxy_policy,
        target_policy=target_policy, keepalive=config, http_proxy=options.http_proxies[0],
        target_http_proxy=options.target_http_proxy,
    )
    fallback_links = [
        make_proxy_link(reactor, config.endpoint("poll", url), policy=proxy_policy,
                        keepalive=config, http_proxy=http_proxy)
        for url, http_proxy in zip(options["proxy-url"][1:], options.http_proxies[1:],
                                   strict=True)]
    metrics = ClientMetrics()
    if config.allow_any:
        from twisted.logger import Logger

        Logger(namespace="pushprox.client.service").warn(
            "--allow-any: this client scrapes any port and path of {fqdn} that the "
            "proxy asks for", fqdn=", ".join(
                name.fqdn for name in [*options.names, *options.file_names]))
    for url, http_proxy in zip(options["proxy-url"], options.http_proxies, strict=True):
        if http_proxy is None:
            continue
        from twisted.logger import Logger

        Logger(namespace="pushprox.client.service").info(
            "The proxy {url} is reached through the HTTP proxy {http_proxy} ({how})",
            url=config.endpoint("", url).decode("ascii"), http_proxy=http_proxy.shown,
            how="CONNECT tunnel" if urlsplit(url).scheme == "https"
            else "absolute-form requests")
    if options.target_http_proxy is not None:
        from twisted.logger import Logger

        Logger(namespace="pushprox.client.service").info(
            "Targets are scraped through the HTTP proxy {http_proxy} (CONNECT tunnels)",
            http_proxy=options.target_http_proxy.shown)
    if options.fqdn_guessed and config.fqdn.lower().split(".")[0] == "localhost":
        from twisted.logger import Logger

        Logger(namespace="pushprox.client.service").warn(
            "This host's FQDN is {fqdn}: Prometheus must scrape it as {fqdn}, and two "
            "such clients would take each other's scrapes; give the name Prometheus uses "
            "with --fqdn", fqdn=config.fqdn)
    service = program_service(options)
    #: The tokens in force, for the names added later too (token files are re-read).
    tokens = {"proxy": options["proxy-token"], "target": options["target-bearer-token"]}

    def make_client(name: ClientName) -> ClientService:
        config = dataclasses.replace(options.config_for(name), proxy_token=tokens["proxy"],
                                     target_bearer_token=tokens["target"])
        return ClientService(config, reactor=reactor, proxy_link=proxy_link,
                             fallback_links=fallback_links, target_link=target_link,
                             metrics=metrics, owns_connections=False)

    def close_connections() -> Deferred[Any]:
        return DeferredList([proxy_link.close(), *(link.close() for link in fallback_links),
                             target_link.close(),
                             *(pool.closeCachedConnections() for pool in pools)])

    roster = ClientRoster(fixed=options.names, targets_file=options["targets-file"],
                          from_file=options.file_names, make_client=make_client,
                          close_connections=close_connections)
    roster.setServiceParent(service)
    if options["targets-file"]:
        reloader.register("--targets-file", roster.reload, watch=[options["targets-file"]])
    if options["proxy-token-file"] or options["target-bearer-token-file"]:

        def use_tokens() -> None:
            tokens["proxy"] = read_token(options["proxy-token-file"], "proxy-token-file")
            tokens["target"] = read_token(options["target-bearer-token-file"],
                                          "target-bearer-token-file")
            for client in roster.clients():
                cast(ClientService, client).use_tokens(proxy_token=tokens["proxy"],
                                  target_bearer_token=tokens["target"])

        reloader.register("--proxy-token-file/--target-bearer-token-file", use_tokens)
    if options["metrics-listen"]:
        from pushprox.shared.metrics import metrics_site

        web: WebConfig | None = options["web-config"]
        site = metrics_site(metrics.registry)
        if web is not None:
            from pushprox.shared.auth import PasswordChecker, ScraperAuth

            auth = ScraperAuth(endpoint_passwords=PasswordChecker(dict(web.users))
                               if web.users else None)
            headers = web_headers(web)
            site = metrics_site(metrics.registry, auth=auth if web.users else None,
                                headers=headers)
            reloader.register("--web.config.file", WebConfigReload(
                options["web-config-file"], web, headers, auth).reload)
        add_listener(service, "metrics-listen",
                     tls_description(options["tls-settings"], options["metrics-listen"],
                                     web=web),
                     site, reactor, reloader=reloader)
    reload_services(service, reloader, reactor, options["tls-reload-interval"])
    return service


def read_token(path: str | None, flag: str) -> str | None:
    """``read_secret`` for a reload: a bad file is a ValueError, not a usage error."""
    try:
        return read_secret(path, flag)
    except usage.UsageError as error:
        raise ValueError(str(error)) from None
