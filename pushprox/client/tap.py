# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-client``: command-line options, read and checked into values, and
``makeService``, which hands them to ``pushprox.client.assembly``."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from pushprox.client.assembly import ClientSetup, ClientTLS, assemble
from pushprox.client.names import ClientName, check_unique, parse_client_name
from pushprox.client.outbound_proxy import choose_http_proxy, parse_http_proxy
from pushprox.client.roster import read_targets_file
from pushprox.shared import wire
from pushprox.shared.config import (
    ClientConfig,
    default,
    option_values,
    twistd_flags,
    twistd_parameters,
)
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
    one_line_errors,
    program_service,
    tls_settings,
    upstream_names,
)
from pushprox.shared.web_config import load_web_config


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
        """Check the combination of options and read their files into ``setup()``."""
        super().postOptions()
        if not self["proxy-url"]:
            raise usage.UsageError("--proxy-url is required, e.g. --proxy-url http://proxy:8080/")
        try:
            http_proxies = tuple(
                choose_http_proxy(url, os.environ, explicit=self["http-proxy"],
                                  use_environment=not self["ignore-proxy-environment"])
                for url in self["proxy-url"])
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        target_http_proxy = None
        if self["target-http-proxy"]:
            try:
                target_http_proxy = parse_http_proxy(self["target-http-proxy"])
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
        file_names: list[ClientName] = []
        if self["targets-file"]:
            try:
                file_names = read_targets_file(self["targets-file"])
            except ValueError as error:
                raise usage.UsageError(f"--targets-file {self['targets-file']}: {error}") from None
        fqdn_guessed = not self.names and not self["targets-file"]
        if fqdn_guessed:
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
            check_unique([*self.names, *file_names])
        except ValueError as error:
            raise usage.UsageError(
                f"--targets-file {self['targets-file']}: {error} (with --fqdn)") from None
        if self["retry-initial-wait"] > self["retry-max-wait"]:
            raise usage.UsageError(f"{self.given_as('retry-initial-wait')} exceeds "
                                   f"{self.given_as('retry-max-wait')}")
        proxy_token = read_secret(self["proxy-token-file"], "proxy-token-file")
        target_token = read_secret(self["target-bearer-token-file"], "target-bearer-token-file")
        try:
            web = load_web_config(self["web-config-file"]) if self["web-config-file"] else None
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if web is not None and not self["metrics-listen"]:
            raise usage.UsageError("--web.config.file is for --metrics-listen, which is off")
        self._setup = ClientSetup(
            shared=self._shared_config(proxy_token, target_token),
            names=tuple(self.names),
            file_names=tuple(file_names),
            fqdn_guessed=fqdn_guessed,
            http_proxies=http_proxies,
            target_http_proxy=target_http_proxy,
            proxy_tls=ClientTLS(
                cacert=self["tls-cacert"], cert=self["tls-cert"], key=self["tls-key"],
                insecure_skip_verify=bool(self["tls-insecure-skip-verify"]),
                min_version=self["tls-min-version"], cipher_suites=self["tls-cipher-suites"]),
            target_tls=ClientTLS(
                cacert=self["target-tls-cacert"], cert=self["target-tls-cert"],
                key=self["target-tls-key"],
                insecure_skip_verify=bool(self["target-tls-insecure-skip-verify"])),
            targets_file=self["targets-file"],
            proxy_token_file=self["proxy-token-file"],
            target_bearer_token_file=self["target-bearer-token-file"],
            metrics_listen=self["metrics-listen"] or None,
            tls=tls_settings(self, web),
            web_config_file=self["web-config-file"],
            web=web,
            reload_interval=self["tls-reload-interval"],
        )

    def _shared_config(self, proxy_token: str | None,
                       target_token: str | None) -> ClientConfig:
        """The configuration every name shares (an empty FQDN: each name has its own)."""
        return ClientConfig(
            proxy_url=self["proxy-url"][0],
            proxy_urls=tuple(self["proxy-url"]) if len(self["proxy-url"]) > 1 else (),
            fqdn="",
            allow_ports=frozenset(self["allow-port"]) or default(ClientConfig, "allow_ports"),
            allow_paths=frozenset(self["allow-path"]) or default(ClientConfig, "allow_paths"),
            proxy_token=proxy_token,
            target_bearer_token=target_token,
            labels=tuple(self["label"]),
            **option_values(ClientConfig, self),
        )

    def setup(self) -> ClientSetup:
        """What the client is built from (after parsing)."""
        return self._setup

    def configs(self) -> list[ClientConfig]:
        """The configuration of each name (--fqdn, then --targets-file), in order."""
        return self._setup.configs()

    def config(self) -> ClientConfig:
        """The configuration of the first name (an empty FQDN when there is none yet)."""
        every = self.configs()
        return every[0] if every else self._setup.shared


@one_line_errors
def makeService(options: Options, reactor: Any = None) -> IService:
    """
    A client service for each name (--fqdn), plus the /metrics endpoint when one is
    configured (``pushprox.client.assembly``).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return assemble(options.setup(), reactor, program_service(options))
