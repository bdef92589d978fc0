# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-client``: command-line options and the service they make."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService
from twisted.python import usage

from pushprox import wire
from pushprox.client import ClientService, make_connections
from pushprox.config import (
    ClientConfig,
    default,
    option_values,
    twistd_flags,
    twistd_parameters,
)
from pushprox.metrics import ClientMetrics
from pushprox.options import (
    OptionValueError,
    host_name,
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
from pushprox.program import (
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
from pushprox.reload import Reloader
from pushprox.web_config import WebConfig, load_web_config


class Options(ProgramOptions):
    """Options of ``twistd pushprox-client`` and of the ``pushprox-client`` command."""

    program = "pushprox-client"
    upstream_flags = upstream_names("tls.cacert", "tls.cert", "tls.key", "web.config.file",
                                    renamed={
        "metrics-addr": "metrics-listen", "proxy.retry.initial-wait": "retry-initial-wait",
        "proxy.retry.max-wait": "retry-max-wait"})
    #: The variables upstream's client images read.
    environment_aliases = {"FQDN": "fqdn", "PROXY_URL": "proxy-url"}
    sibling = "pushprox.proxy_tap.Options"
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
    ]
    optParameters: list[list[Any]] = [
        *twistd_parameters(ClientConfig),
        ["proxy-url", None, None, "URL of the proxy, e.g. http://proxy:8080/ (required); "
         "a path prefix and user:token@ credentials are allowed.",
         naming("proxy-url", http_url)],
        ["fqdn", None, None, "Name this client registers as (a host name, without a port); "
         "Prometheus scrapes http://FQDN:PORT/... through the proxy (default: this "
         "host's FQDN).", naming("fqdn", host_name)],
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
        #: Whether --fqdn was left to this host's name (a warning if it is localhost).
        self.fqdn_guessed = False

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
        for prefix in ("tls", "target-tls"):
            cert, key = f"{prefix}-cert", f"{prefix}-key"
            if bool(self[cert]) != bool(self[key]):
                raise usage.UsageError(
                    f"{self.given_as(cert)} and {self.given_as(key)} go together")
            if self[cert] and not key_matches_certificate(self[cert], self[key]):
                raise usage.UsageError(
                    f"{self.given_as(key)} {self[key]} is not the key of "
                    f"{self.given_as(cert)} {self[cert]}")
        self.fqdn_guessed = self["fqdn"] is None
        if self["fqdn"] is None:
            # Looked up only when needed: a slow resolver must not delay --help.
            self["fqdn"] = socket.getfqdn()
        if wire.normalize_fqdn(self["fqdn"].encode("utf-8")) is None:
            if self.fqdn_guessed:
                raise usage.UsageError(
                    f"this host's name {self['fqdn']!r} is not a host name Prometheus can "
                    "scrape; give the name it uses with --fqdn")
            raise usage.UsageError(f"{self.given_as('fqdn')} {self['fqdn']}: not a host name")
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

    def config(self) -> ClientConfig:
        """The client configuration these options describe."""
        return ClientConfig(
            proxy_url=self["proxy-url"],
            fqdn=self["fqdn"],
            allow_ports=frozenset(self["allow-port"]) or default(ClientConfig, "allow_ports"),
            allow_paths=frozenset(self["allow-path"]) or default(ClientConfig, "allow_paths"),
            proxy_token=self["proxy-token"],
            target_bearer_token=self["target-bearer-token"],
            labels=tuple(self["label"]),
            **option_values(ClientConfig, self),
        )


@one_line_errors
def makeService(options: Options, reactor: Any = None) -> IService:
    """The client service, plus its /metrics endpoint when one is configured."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.config()
    reloader = Reloader()
    proxy_policy = target_policy = None
    if urlsplit(config.proxy_url).scheme == "https" or any(
            options[k] for k in ("tls-cacert", "tls-cert", "tls-insecure-skip-verify")):
        from pushprox import tls

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
        from pushprox import tls

        # Targets keep Twisted's defaults: exporters may be older than the profile.
        target_policy = tls.https_policy(
            cacert=options["target-tls-cacert"], cert=options["target-tls-cert"],
            key=options["target-tls-key"],
            insecure_skip_verify=options["target-tls-insecure-skip-verify"],
        )
        if target_policy.paths:
            reloader.register("--target-tls-cacert/--target-tls-cert/--target-tls-key",
                              target_policy.reload, watch=target_policy.paths)
    proxy_link, target_agent, pools = make_connections(
        reactor, config.endpoint("poll"), proxy_policy=proxy_policy,
        target_policy=target_policy, keepalive=config
    )
    metrics = ClientMetrics()
    if config.allow_any:
        from twisted.logger import Logger

        Logger(namespace="pushprox.client").warn(
            "--allow-any: this client scrapes any port and path of {fqdn} that the "
            "proxy asks for", fqdn=config.fqdn)
    if options.fqdn_guessed and config.fqdn.lower().split(".")[0] == "localhost":
        from twisted.logger import Logger

        Logger(namespace="pushprox.client").warn(
            "This host's FQDN is {fqdn}: Prometheus must scrape it as {fqdn}, and two "
            "such clients would take each other's scrapes; give the name Prometheus uses "
            "with --fqdn", fqdn=config.fqdn)
    service = program_service(options)
    client = ClientService(config, reactor=reactor, proxy_link=proxy_link,
                           target_agent=target_agent, metrics=metrics, pools=pools)
    client.setServiceParent(service)
    if options["proxy-token-file"] or options["target-bearer-token-file"]:
        reloader.register(
            "--proxy-token-file/--target-bearer-token-file",
            lambda: client.use_tokens(
                proxy_token=read_token(options["proxy-token-file"], "proxy-token-file"),
                target_bearer_token=read_token(options["target-bearer-token-file"],
                                               "target-bearer-token-file")))
    if options["metrics-listen"]:
        from pushprox.metrics import metrics_site

        web: WebConfig | None = options["web-config"]
        site = metrics_site(metrics.registry)
        if web is not None:
            from pushprox.auth import PasswordChecker, ScraperAuth

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
