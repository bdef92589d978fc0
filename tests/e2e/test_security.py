"""Prometheus scrapes through a TLS proxy with a password; clients prove who they are.

The proxy listens on ``ssl:`` with a server certificate for 127.0.0.1 and localhost, wants
``--scrape-auth`` (bcrypt htpasswd) from scrapers and, depending on the test, a client
certificate (``--client-ca``) or a token (``--client-tokens``) from clients. Prometheus
reaches it with ``proxy_url: https://prom:PASSWORD@127.0.0.1:PORT/`` and the proxy's CA in
the job's ``tls_config``, which Go's HTTP transport also uses for the TLS connection to an
``https`` proxy (not only for ``https`` targets).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from ..tlsfixtures import CertificateAuthority
from .conftest import STARTUP_TIMEOUT, Stack
from .harness import TWISTD, HTTPResult, Process, free_port, wait_until

pytestmark = pytest.mark.e2e

SCRAPER = "prom"
# A space, '/' or '#' in a raw proxy_url password makes Prometheus refuse its configuration
# ("net/url: invalid userinfo", "invalid port"); percent-encoded (%20, %40 for '@'), the
# password is decoded before Prometheus sends it in Proxy-Authorization.
PASSWORD = "correct horse@battery staple"


@dataclass
class PKI:
    """The proxy's server certificate (own CA) and the client CA with its issued certificates."""

    directory: Path
    server_ca: CertificateAuthority = field(init=False)
    client_ca: CertificateAuthority = field(init=False)
    server_cert: str = field(init=False)
    server_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.server_ca = CertificateAuthority(str(self.directory), "proxy-ca")
        self.client_ca = CertificateAuthority(str(self.directory), "clients-ca")
        server = self.server_ca.issue("proxy", ["127.0.0.1", "localhost"], client=False)
        self.server_cert, self.server_key = server.cert, server.key

    def client_cert(self, name: str) -> tuple[str, str]:
        """A client certificate (and key) naming ``name``, signed by the client CA."""
        issued = self.client_ca.issue(f"client-{name}", [name], server=False)
        return issued.cert, issued.key


@dataclass
class TLSProxy:
    """A running ``twistd pushprox-proxy`` on an ``ssl:`` listener with ``--scrape-auth``."""

    port: int
    process: Process
    ca_file: str
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"https://127.0.0.1:{self.port}"

    def get(self, path: str, *, password: str | None = PASSWORD) -> HTTPResult:
        """GET over TLS (the proxy's CA trusted), with basic auth as the scraper unless None."""
        context = ssl.create_default_context(cafile=self.ca_file)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        request = urllib.request.Request(self.url + path)
        if password is not None:
            token = base64.b64encode(f"{SCRAPER}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with opener.open(request, timeout=5) as response:
                return HTTPResult(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            try:
                return HTTPResult(error.code, dict(error.headers), error.read())
            finally:
                error.close()

    def clients(self) -> set[str]:
        """FQDNs listed by /clients (read over TLS with the scraper's password)."""
        result = self.get("/clients")
        assert result.status == 200, result
        return {target for group in result.json() for target in group["targets"]}


def start_tls_proxy(stack: Stack, pki: PKI, extra: Sequence[str]) -> TLSProxy:
    """A proxy on ssl:PORT with the PKI's server certificate, --scrape-auth and ``extra``."""
    htpasswd = stack.directory("auth") / "scrapers.htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{SCRAPER}:{hashed}\n")
    port = free_port()
    keys = f"privateKey={pki.server_key}:certKey={pki.server_cert}"
    listen = f"ssl:{port}:{keys}:interface=127.0.0.1"
    argv = [
        str(TWISTD), "--pidfile=", "-n", "pushprox-proxy",
        "--listen", listen, "--scrape-auth", str(htpasswd), *extra,
    ]  # fmt: skip
    proxy = TLSProxy(port, stack.start("proxy", argv), pki.server_ca.cert_path)
    wait_until(
        lambda: proxy.get("/-/healthy").status == 200,
        STARTUP_TIMEOUT,
        what=f"TLS proxy /-/healthy on port {port}",
        watch=[proxy.process],
    )
    # The scraper's password is wanted for /clients too, and checked.
    assert proxy.get("/clients", password=None).status == 401
    assert proxy.get("/clients", password="wrong").status == 401
    return proxy


def start_client(
    stack: Stack,
    name: str,
    proxy: TLSProxy,
    fqdn: str,
    port: int,
    *,
    proxy_url: str | None = None,
    extra: Sequence[str] = (),
) -> Process:
    """``twistd pushprox-client`` polling ``proxy`` over TLS as ``fqdn``, allowed ``port``."""
    argv = [
        str(TWISTD), "--pidfile=", "-n", "pushprox-client",
        "--proxy-url", proxy_url or proxy.url + "/",
        "--tls-cacert", proxy.ca_file,
        "--fqdn", fqdn,
        "--target-host", "127.0.0.1",
        "--allow-port", str(port),
        "--metrics-listen", "",
        "--retry-initial-wait", "0.5",
        "--retry-max-wait", "1",
        *extra,
    ]  # fmt: skip
    return stack.start(name, argv)


def mtls_args(pki: PKI, cert_name: str) -> list[str]:
    cert, key = pki.client_cert(cert_name)
    return ["--tls-cert", cert, "--tls-key", key]


def wait_registered(proxy: TLSProxy, fqdns: set[str], clients: Sequence[Process]) -> None:
    wait_until(
        lambda: proxy.clients() == fqdns,
        STARTUP_TIMEOUT,
        what=f"exactly {sorted(fqdns)} in the proxy's /clients",
        watch=[proxy.process, *clients],
    )


def tls_proxy_job(
    name: str, targets: Sequence[str], proxy: TLSProxy, *, password: str = PASSWORD
) -> dict[str, Any]:
    """The Prometheus job of the README: credentials in proxy_url, the proxy's CA in tls_config."""
    quoted = urllib.parse.quote(password, safe="")
    return {
        "job_name": name,
        "proxy_url": f"https://{SCRAPER}:{quoted}@127.0.0.1:{proxy.port}/",
        "tls_config": {"ca_file": proxy.ca_file},
        "static_configs": [{"targets": list(targets)}],
    }


def log_lines(process: Process, pattern: str) -> list[str]:
    return [line for line in process.log_text().splitlines() if re.search(pattern, line)]


def own_log(process: Process) -> str:
    """What the program logged, without the harness' ``=== start: ARGV`` lines."""
    return "\n".join(
        line for line in process.log_text().splitlines() if not line.startswith("=== ")
    )


def test_prometheus_scrapes_through_a_tls_proxy_with_its_password(stack: Stack) -> None:
    """Right password in proxy_url, proxy CA in tls_config, mTLS client: up 1, real series."""
    pki = PKI(stack.directory("pki"))
    exporter = stack.exporter("alpha")
    proxy = start_tls_proxy(stack, pki, ["--client-ca", pki.client_ca.cert_path])
    client = start_client(
        stack, "client-node1", proxy, "node1.example", exporter.port,
        extra=mtls_args(pki, "node1.example"),
    )  # fmt: skip
    wait_registered(proxy, {"node1.example"}, [client])
    instance = f"node1.example:{exporter.port}"
    prometheus = stack.prometheus([tls_proxy_job("secure", [instance], proxy)])

    prometheus.wait_up("secure", [instance])
    samples = prometheus.query('e2e_exporter_info{job="secure"}')
    seen = [(s["metric"]["name"], s["metric"]["host"]) for s in samples]
    assert seen == [("alpha", instance)], samples
    # The proxy's log never holds the password (nor its base64 form).
    secret = base64.b64encode(f"{SCRAPER}:{PASSWORD}".encode()).decode()
    for process in (proxy.process, client):
        assert PASSWORD not in own_log(process), process.name
        assert secret not in own_log(process), process.name


def test_wrong_password_in_proxy_url_is_down_with_407(stack: Stack) -> None:
    """A wrong password in proxy_url: up 0 with 407, while the right one beside it is up."""
    pki = PKI(stack.directory("pki"))
    exporter = stack.exporter("alpha")
    proxy = start_tls_proxy(stack, pki, ["--client-ca", pki.client_ca.cert_path])
    client = start_client(
        stack, "client-node1", proxy, "node1.example", exporter.port,
        extra=mtls_args(pki, "node1.example"),
    )  # fmt: skip
    wait_registered(proxy, {"node1.example"}, [client])
    instance = f"node1.example:{exporter.port}"
    without_ca = tls_proxy_job("no-ca", [instance], proxy)
    del without_ca["tls_config"]
    prometheus = stack.prometheus(
        [
            tls_proxy_job("right", [instance], proxy),
            tls_proxy_job("wrong", [instance], proxy, password="not the password"),
            without_ca,
        ]
    )

    prometheus.wait_up("right", [instance])
    prometheus.wait_up("wrong", [instance], value=0)
    target = prometheus.wait_health("wrong", instance, "down")
    assert "407" in target["lastError"], target
    assert "Proxy Authentication Required" in target["lastError"], target
    assert prometheus.query('e2e_exporter_info{job="wrong"}') == []
    assert log_lines(
        proxy.process, r"Refused scrape of .*node1\.example.*: 407 wrong user or password"
    )
    assert "not the password" not in own_log(proxy.process)
    # The control: without tls_config the proxy's certificate is not trusted, which shows
    # that the job's tls_config is what Prometheus uses for the TLS connection to the proxy.
    prometheus.wait_up("no-ca", [instance], value=0)
    target = prometheus.wait_health("no-ca", instance, "down")
    assert "x509" in target["lastError"], target
    assert prometheus.query('e2e_exporter_info{job="no-ca"}') == []


REFUSED_IMPOSTOR = (
    r"Refused poll for node1\.example from .*: 403 the client certificate does not name "
    r"node1\.example"
)


def test_client_certificate_for_another_fqdn_never_registers(stack: Stack) -> None:
    """A client whose certificate names node2.example polls as node1.example: 403, never listed.

    The legitimate node2.example (same kind of certificate) registers and is up; Prometheus'
    job for node1.example is down with 404 (no client), so no scrape ever reaches the impostor.
    """
    pki = PKI(stack.directory("pki"))
    alpha = stack.exporter("alpha")
    beta = stack.exporter("beta")
    proxy = start_tls_proxy(stack, pki, ["--client-ca", pki.client_ca.cert_path])
    legit = start_client(
        stack, "client-node2", proxy, "node2.example", beta.port,
        extra=mtls_args(pki, "node2.example"),
    )  # fmt: skip
    impostor = start_client(
        stack, "impostor", proxy, "node1.example", alpha.port,
        extra=mtls_args(pki, "node2.example"),
    )  # fmt: skip
    wait_registered(proxy, {"node2.example"}, [legit, impostor])
    refused = wait_until(
        lambda: log_lines(proxy.process, REFUSED_IMPOSTOR),
        STARTUP_TIMEOUT,
        what="the proxy refusing node1.example's poll with 403",
        watch=[proxy.process, impostor],
    )
    assert "node1.example" in refused[0], refused
    wait_until(
        lambda: log_lines(
            impostor, r"poll answered 403: the client certificate does not name node1\.example"
        ),
        STARTUP_TIMEOUT,
        what="the impostor logging the 403",
        watch=[impostor],
    )

    impostor_target = f"node1.example:{alpha.port}"
    legit_target = f"node2.example:{beta.port}"
    prometheus = stack.prometheus([tls_proxy_job("nat", [impostor_target, legit_target], proxy)])
    prometheus.wait_up("nat", {impostor_target: 0, legit_target: 1})
    target = prometheus.wait_health("nat", impostor_target, "down")
    assert "404" in target["lastError"], target
    # Several rounds later, still refused and never registered.
    wait_until(
        lambda: len(log_lines(proxy.process, REFUSED_IMPOSTOR)) >= 3,
        STARTUP_TIMEOUT,
        what="three refused polls",
        watch=[proxy.process, impostor],
    )
    assert proxy.clients() == {"node2.example"}
    assert log_lines(impostor, r"Scraped ") == []
    prometheus.wait_up("nat", {impostor_target: 0, legit_target: 1}, timeout=1)


def test_client_token_in_an_upstream_style_proxy_url(stack: Stack) -> None:
    """--client-tokens, client with https://node1.example:TOKEN@proxy/: up 1; a bad token is not."""
    pki = PKI(stack.directory("pki"))
    alpha = stack.exporter("alpha")
    tokens = stack.directory("auth") / "client-tokens"
    token = "s3cr3t-node1-token"
    tokens.write_text(f"node1.example {token}\nnode2.example another-node2-token\n")
    proxy = start_tls_proxy(stack, pki, ["--client-tokens", str(tokens)])
    client = start_client(
        stack, "client-node1", proxy, "node1.example", alpha.port,
        proxy_url=f"https://node1.example:{token}@127.0.0.1:{proxy.port}/",
    )  # fmt: skip
    intruder = start_client(
        stack, "intruder", proxy, "node2.example", alpha.port,
        proxy_url=f"https://node2.example:{token}@127.0.0.1:{proxy.port}/",
    )  # fmt: skip
    wait_registered(proxy, {"node1.example"}, [client, intruder])
    wait_until(
        lambda: log_lines(
            intruder, r"poll answered 403: this token is not allowed to poll as node2\.example"
        ),
        STARTUP_TIMEOUT,
        what="the intruder's poll refused",
        watch=[intruder],
    )

    instance = f"node1.example:{alpha.port}"
    prometheus = stack.prometheus([tls_proxy_job("tokens", [instance], proxy)])
    prometheus.wait_up("tokens", [instance])
    assert proxy.clients() == {"node1.example"}
    for process in (proxy.process, client, intruder):
        assert token not in own_log(process), process.name
    # The client's URL credentials stay out of what the proxy lists.
    assert token not in json.dumps(proxy.get("/clients").json())
