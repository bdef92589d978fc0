# -*- test-case-name: tests.test_taps -*-
"""``twistd pushprox-proxy``: command-line options, read and checked into values, and
``makeService``, which hands them to ``pushprox.proxy.assembly``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from pushprox.proxy.assembly import ClusterSetup, ProxySetup, assemble
from pushprox.shared.auth import MIN_TOKEN_LENGTH, load_htpasswd, load_tokens, parse_networks
from pushprox.shared.config import ProxyConfig, option_values, twistd_flags, twistd_parameters
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
    one_line_errors,
    program_service,
    tls_settings,
    upstream_names,
)
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
        """Check the combination of options and read their files into ``setup()``."""
        super().postOptions()
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["scrape-default-timeout"] > self["scrape-max-timeout"]:
            raise usage.UsageError(f"{self.given_as('scrape-default-timeout')} exceeds "
                                   f"{self.given_as('scrape-max-timeout')}")
        try:
            web = load_web_config(self["web-config-file"]) if self["web-config-file"] else None
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        web_tls = web.tls if web else None
        tls = tls_settings(self, web)
        if self["client-ca"] and not (web_tls or any(e.startswith("ssl:")
                                                     for e in self["listen"])):
            raise usage.UsageError(f"{self.given_as('client-ca')} needs an ssl: endpoint in "
                                   f"{self.given_as('listen')}")
        if self["client-ca"] and web_tls and web_tls.client_ca_file:
            raise usage.UsageError(f"{self.given_as('client-ca')} and the web configuration "
                                   "file's client_ca_file: give the client CA once")
        try:
            tokens = load_tokens(self["client-tokens"]) if self["client-tokens"] else {}
            passwords = load_htpasswd(self["scrape-auth"]) if self["scrape-auth"] else None
            networks = tuple(parse_networks(self["scrape-allow-cidr"]))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self._setup = ProxySetup(
            listen=tuple(self["listen"]),
            tls=tls,
            web_config_file=self["web-config-file"],
            web=web,
            client_ca=self["client-ca"],
            client_tokens_file=self["client-tokens"],
            client_tokens=tokens,
            scrape_auth_file=self["scrape-auth"],
            scrape_passwords=passwords,
            scrape_networks=networks,
            clients_endpoint=not self["no-clients-endpoint"],
            metrics_endpoint=not self["no-metrics-endpoint"],
            reload_interval=self["tls-reload-interval"],
            cluster=self._cluster(web),
        )

    def _cluster(self, web: WebConfig | None) -> ClusterSetup | None:
        """Cluster mode's options go together: Redis, a peer token, a peer URL."""
        cluster_flags = ("redis-password-file", "redis-ca-file", "peer-url", "peer-token-file")
        if not self["redis"]:
            given = [flag for flag in cluster_flags if self[flag]]
            if given:
                raise usage.UsageError(f"{self.given_as(given[0])} needs --redis")
            return None
        if not self["peer-token-file"]:
            raise usage.UsageError("--redis needs --peer-token-file: replicas authenticate "
                                   "each other with it")
        if not self["peer-url"] and web and web.tls:
            raise usage.UsageError("--redis with the web configuration file's TLS needs "
                                   "--peer-url (https://...): the tcp: listeners serve TLS")
        peer_token = read_secret(self["peer-token-file"], "peer-token-file")
        if peer_token is None or len(peer_token) < MIN_TOKEN_LENGTH:
            raise usage.UsageError(
                f"--peer-token-file: the token in {self['peer-token-file']} is shorter than "
                f"{MIN_TOKEN_LENGTH} characters (make one with: head -c 32 /dev/urandom | "
                "base64)")
        peer_url = self["peer-url"]
        if not peer_url:
            from pushprox.proxy.cluster.service import default_peer_url

            peer_url = default_peer_url(self["listen"])
            if peer_url is None:
                raise usage.UsageError("--redis needs --peer-url when no tcp: port is listened on")
        if self["redis-ca-file"]:
            from pushprox.proxy.cluster.routes import RedisAddress

            try:
                RedisAddress.from_url(self["redis"], ca_file=self["redis-ca-file"])
            except ValueError as error:
                raise usage.UsageError(f"--redis-ca-file: {error}") from None
        return ClusterSetup(
            redis_url=self["redis"], peer_url=peer_url, peer_token=peer_token,
            redis_password=read_secret(self["redis-password-file"], "redis-password-file"),
            redis_ca_file=self["redis-ca-file"])

    def config(self) -> ProxyConfig:
        """The proxy configuration these options describe."""
        return ProxyConfig(**option_values(ProxyConfig, self))

    def setup(self) -> ProxySetup:
        """What the proxy is built from beside its configuration (after parsing)."""
        return self._setup


@one_line_errors
def makeService(options: Options, reactor: Any = None) -> IService:
    """The proxy: a coordinator and one site on every ``--listen`` endpoint."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return assemble(options.config(), options.setup(), reactor, program_service(options))
