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
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.credentials import fast_hash
from tests.harness.processes import Daemon, Process
from tests.harness.stack import STARTUP_TIMEOUT, Proxy, Stack
from tests.harness.waiting import wait_for
from tests.tlsfixtures import CertificateAuthority

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

    def __post_init__(self) -> None:
        self.server_ca = CertificateAuthority(str(self.directory), "proxy-ca")
        self.client_ca = CertificateAuthority(str(self.directory), "clients-ca")

    def client_cert(self, name: str) -> tuple[str, str]:
        """A client certificate (and key) naming ``name``, signed by the client CA."""
        issued = self.client_ca.issue(f"client-{name}", [name], server=False)
        return issued.cert, issued.key


def basic_auth(password: str) -> list[tuple[str, str]]:
    """The Authorization header of the scraper with ``password``."""
    token = base64.b64encode(f"{SCRAPER}:{password}".encode()).decode()
    return [("Authorization", f"Basic {token}")]


def start_tls_proxy(stack: Stack, pki: PKI, extra: Sequence[str]) -> Proxy:
    """A proxy on ssl:PORT with the PKI's server certificate, --scrape-auth and ``extra``."""
    htpasswd = stack.directory("auth") / "scrapers.htpasswd"
    hashed = fast_hash(PASSWORD.encode()).decode()
    htpasswd.write_text(f"{SCRAPER}:{hashed}\n")
    proxy = stack.proxy(
        extra=["--scrape-auth", str(htpasswd), *extra],
        certificate=pki.server_ca.issue("proxy", ["127.0.0.1", "localhost"], client=False),
        trust=pki.server_ca.cert_path,
        headers=basic_auth(PASSWORD),
    )
    # The scraper's password is wanted for /clients too, and checked.
    for headers in ([], basic_auth("wrong")):
        assert proxy.get("/clients", headers=headers).status == 401, headers
    return proxy


def start_client(
    stack: Stack,
    name: str,
    proxy: Proxy,
    fqdn: str,
    port: int,
    *,
    proxy_url: str | None = None,
    extra: Sequence[str] = (),
) -> Process | Daemon:
    """``twistd pushprox-client`` polling ``proxy`` over TLS as ``fqdn``, allowed ``port``."""
    assert proxy.ca_file is not None
    client = stack.client(
        proxy, fqdn, [port], name=name, proxy_url=proxy_url, wait=False,
        extra=["--tls-cacert", proxy.ca_file, *extra],
    )  # fmt: skip
    return client.process


def mtls_args(pki: PKI, cert_name: str) -> list[str]:
    """The client options presenting a certificate for ``cert_name``."""
    cert, key = pki.client_cert(cert_name)
    return ["--tls-cert", cert, "--tls-key", key]


def wait_registered(proxy: Proxy, fqdns: set[str], clients: Sequence[Process | Daemon]) -> None:
    """Wait until the proxy lists exactly ``fqdns``."""
    wait_for(
        lambda: proxy.clients() == fqdns,
        timeout=STARTUP_TIMEOUT,
        what=f"exactly {sorted(fqdns)} in the proxy's /clients",
        watch=[proxy.process, *clients],
    )


def tls_proxy_job(
    name: str, targets: Sequence[str], proxy: Proxy, *, password: str = PASSWORD
) -> dict[str, Any]:
    """The Prometheus job of the README: credentials in proxy_url, the proxy's CA in tls_config."""
    quoted = urllib.parse.quote(password, safe="")
    return {
        "job_name": name,
        "proxy_url": f"https://{SCRAPER}:{quoted}@127.0.0.1:{proxy.port}/",
        "tls_config": {"ca_file": proxy.ca_file},
        "static_configs": [{"targets": list(targets)}],
    }


def log_lines(process: Process | Daemon, pattern: str) -> list[str]:
    """The lines of the program's log that match ``pattern``."""
    return [line for line in process.log_text().splitlines() if re.search(pattern, line)]


def wait_logged(process: Process | Daemon, pattern: str, *, what: str, count: int = 1,
                watch: Sequence[Process | Daemon] = ()) -> list[str]:
    """Wait until ``count`` lines of the program's log match ``pattern``; return them."""

    def matching() -> list[str] | None:
        lines = log_lines(process, pattern)
        return lines if len(lines) >= count else None

    return wait_for(matching, timeout=STARTUP_TIMEOUT, what=what, watch=[process, *watch])


def own_log(process: Process | Daemon) -> str:
    """What the program logged, without the harness' ``=== start: ARGV`` lines."""
    return "\n".join(
        line for line in process.log_text().splitlines() if not line.startswith("=== ")
    )


def start_mtls_proxy(stack: Stack) -> tuple[PKI, Proxy]:
    """A new PKI, and a TLS proxy that wants certificates of its client CA from clients."""
    pki = PKI(stack.directory("pki"))
    return pki, start_tls_proxy(stack, pki, ["--client-ca", pki.client_ca.cert_path])


def mtls_client_of_tls_proxy(stack: Stack) -> tuple[Proxy, Process | Daemon, str]:
    """A TLS proxy wanting client certificates, node1.example's client and its instance."""
    exporter = stack.exporter("alpha")
    pki, proxy = start_mtls_proxy(stack)
    client = start_client(stack, "client-node1", proxy, "node1.example", exporter.port,
                          extra=mtls_args(pki, "node1.example"))
    wait_registered(proxy, {"node1.example"}, [client])
    return proxy, client, f"node1.example:{exporter.port}"


def test_prometheus_scrapes_through_a_tls_proxy_with_its_password(stack: Stack) -> None:
    """Right password in proxy_url, proxy CA in tls_config, mTLS client: up 1, real series."""
    proxy, client, instance = mtls_client_of_tls_proxy(stack)
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
    proxy, _, instance = mtls_client_of_tls_proxy(stack)
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
    alpha = stack.exporter("alpha")
    beta = stack.exporter("beta")
    pki, proxy = start_mtls_proxy(stack)
    legit = start_client(stack, "client-node2", proxy, "node2.example", beta.port,
                         extra=mtls_args(pki, "node2.example"))
    impostor = start_client(stack, "impostor", proxy, "node1.example", alpha.port,
                            extra=mtls_args(pki, "node2.example"))
    wait_registered(proxy, {"node2.example"}, [legit, impostor])
    refused = wait_logged(proxy.process, REFUSED_IMPOSTOR, watch=[impostor],
                          what="the proxy refusing node1.example's poll with 403")
    assert "node1.example" in refused[0], refused
    wait_logged(impostor, r"poll answered 403: the client certificate does not name node1\.example",
                what="the impostor logging the 403")

    impostor_target = f"node1.example:{alpha.port}"
    legit_target = f"node2.example:{beta.port}"
    prometheus = stack.prometheus([tls_proxy_job("nat", [impostor_target, legit_target], proxy)])
    prometheus.wait_up("nat", {impostor_target: 0, legit_target: 1})
    target = prometheus.wait_health("nat", impostor_target, "down")
    assert "404" in target["lastError"], target
    # Several rounds later, still refused and never registered.
    wait_logged(proxy.process, REFUSED_IMPOSTOR, count=3, watch=[impostor],
                what="three refused polls")
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
    wait_logged(intruder, r"poll answered 403: this token is not allowed to poll as node2\.example",
                what="the intruder's poll refused")

    instance = f"node1.example:{alpha.port}"
    prometheus = stack.prometheus([tls_proxy_job("tokens", [instance], proxy)])
    prometheus.wait_up("tokens", [instance])
    assert proxy.clients() == {"node1.example"}
    for process in (proxy.process, client, intruder):
        assert token not in own_log(process), process.name
    # The client's URL credentials stay out of what the proxy lists.
    assert token not in json.dumps(proxy.get("/clients").json())
