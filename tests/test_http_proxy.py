"""
The client reaches the proxy through a real HTTP proxy (Debian's tinyproxy), as clients on
corporate networks must: absolute-form requests for an ``http://`` proxy URL, a CONNECT
tunnel for an ``https://`` one, credentials as ``Proxy-Authorization``, ``NO_PROXY`` and
loopback addresses going around it, targets never through it.  tinyproxy's log of the
request lines it received proves which way each request went.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping, Sequence

import pytest

from tests.harness.processes import Process, twistd_argv
from tests.harness.rawhttp import (
    HTTPResponse,
    raw_http,
    scrape_request,
)
from tests.harness.stack import STARTUP_TIMEOUT, Proxy, Stack
from tests.harness.tinyproxy import TINYPROXY, TinyProxy, start_tinyproxy
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.processes

FQDN = "node1.example"
#: tinyproxy takes only word characters in passwords; the URL's percent-encoding of one
#: ("%33" for "3") shows that it is decoded before Proxy-Authorization is made.
PASSWORD = "s3cret-pw"
ENCODED = "s%33cret-pw"


@pytest.fixture
def stack(plain_stack: Stack) -> Stack:
    """The processes of this test, tinyproxy among them; all stopped at its end."""
    if not TINYPROXY.exists():
        reason = f"{TINYPROXY} is missing (Debian package tinyproxy)"
        if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
            pytest.fail(reason + " (PUSHPROX_REQUIRE_E2E=1)", pytrace=False)
        pytest.skip(reason)
    return plain_stack


def outbound_address() -> str | None:
    """This host's IPv4 address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def start_client(stack: Stack, proxy: Proxy, exporter_port: int, *, name: str = "client",
                 extra: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 fqdn: str = FQDN) -> Process:
    """A client of ``proxy`` with ``env`` added to a proxy-free environment; returns once
    the proxy lists it."""
    args = stack.client_args(proxy.url + "/", fqdn, [exporter_port], list(extra))
    process = stack.start(name, twistd_argv("pushprox-client", args), env=dict(env or {}))
    wait_for(lambda: fqdn in proxy.clients(), timeout=STARTUP_TIMEOUT,
             what=f"{fqdn} in the proxy's /clients", watch=[process, proxy.process])
    return process


def logged(process: Process) -> str:
    """What the program logged, without the command lines the harness writes."""
    return "\n".join(line for line in process.log_text().splitlines()
                     if not line.startswith("=== "))


def scrape(proxy: Proxy, exporter_port: int, fqdn: str = FQDN) -> HTTPResponse:
    """A scrape of the exporter through ``proxy``, as Prometheus sends it."""
    request = scrape_request(f"http://{fqdn}:{exporter_port}/metrics", 10.0)
    tls = ssl.create_default_context(cafile=proxy.ca_file) if proxy.https else None
    return raw_http(proxy.port, request, host=proxy.host, timeout=20, tls=tls)


def assert_scraped(proxy: Proxy, exporter_port: int, name: str, fqdn: str = FQDN) -> None:
    """The exporter ``name`` answers through the proxy and the client of ``fqdn``."""
    answer = scrape(proxy, exporter_port, fqdn)
    assert answer.status == 200, answer.text[:300]
    assert f'e2e_exporter_info{{name="{name}"' in answer.text, answer.text[:300]


def proxied_requests(tinyproxy: TinyProxy, proxy: Proxy) -> set[str]:
    """The request lines tinyproxy received, once both a poll and a push went through."""
    wanted = {f"POST {proxy.url}/poll HTTP/1.1", f"POST {proxy.url}/push HTTP/1.1"}
    wait_for(lambda: wanted <= set(tinyproxy.requests()), timeout=20,
             what=f"{wanted} in tinyproxy's log", describe=tinyproxy.log)
    return set(tinyproxy.requests())


def test_http_proxy_flag_sends_polls_and_pushes_through_it(stack: Stack) -> None:
    """--http-proxy with an http:// proxy URL: absolute-form requests, targets direct."""
    tinyproxy = start_tinyproxy(stack)
    exporter = stack.exporter("site")
    proxy = stack.proxy()
    client = start_client(stack, proxy, exporter.port, extra=["--http-proxy", tinyproxy.url])

    assert_scraped(proxy, exporter.port, "site")
    # Only the client's requests to the proxy; the exporter was scraped directly.
    assert proxied_requests(tinyproxy, proxy) == {
        f"POST {proxy.url}/poll HTTP/1.1", f"POST {proxy.url}/push HTTP/1.1"}
    assert f"through the HTTP proxy {tinyproxy.url}" in client.log_text()


def test_basic_auth_with_absolute_form(stack: Stack) -> None:
    """Credentials in the proxy URL become Proxy-Authorization; they are never logged."""
    tinyproxy = start_tinyproxy(stack, credentials=("alice", PASSWORD))
    exporter = stack.exporter("site")
    proxy = stack.proxy()
    url = f"http://alice:{ENCODED}@127.0.0.1:{tinyproxy.port}"
    client = start_client(stack, proxy, exporter.port, env={"HTTP_PROXY": "http://127.0.0.1:1"},
                          extra=["--http-proxy", url])

    assert_scraped(proxy, exporter.port, "site")
    assert f"POST {proxy.url}/poll HTTP/1.1" in proxied_requests(tinyproxy, proxy)
    for secret in (PASSWORD, ENCODED, "alice:"):
        assert secret not in logged(client)


def test_https_proxy_url_goes_through_a_connect_tunnel(stack: Stack) -> None:
    """An https:// proxy URL: one CONNECT, TLS with the proxy inside it, credentials sent."""
    ca = stack.certificate_authority()
    proxy = stack.proxy(certificate=ca.issue("proxy", ["127.0.0.1"], client=False),
                        trust=ca.cert_path)
    tinyproxy = start_tinyproxy(stack, credentials=("alice", PASSWORD),
                                connect_ports=[proxy.port])
    exporter = stack.exporter("site")
    url = f"http://alice:{ENCODED}@127.0.0.1:{tinyproxy.port}"
    client = start_client(stack, proxy, exporter.port,
                          extra=["--tls-cacert", ca.cert_path, "--http-proxy", url])

    assert_scraped(proxy, exporter.port, "site")
    requests = tinyproxy.requests()
    # Polls and pushes went inside the one tunnel, which tinyproxy cannot read.
    assert set(requests) == {f"CONNECT 127.0.0.1:{proxy.port} HTTP/1.1"}, requests
    for secret in (PASSWORD, ENCODED):
        assert secret not in logged(client)


def test_refused_credentials_are_reported_and_never_logged(stack: Stack) -> None:
    """The proxy's refusal (tinyproxy answers CONNECT with 401, not 407) is said in the
    client's log, without the password sent."""
    ca = stack.certificate_authority()
    proxy = stack.proxy(certificate=ca.issue("proxy", ["127.0.0.1"], client=False),
                        trust=ca.cert_path)
    tinyproxy = start_tinyproxy(stack, credentials=("alice", PASSWORD),
                                connect_ports=[proxy.port])
    args = stack.client_args(proxy.url + "/", FQDN, [9100], [
        "--tls-cacert", ca.cert_path,
        "--http-proxy", f"http://alice:wrong-password@127.0.0.1:{tinyproxy.port}"])
    client = stack.start("client", twistd_argv("pushprox-client", args))

    refusal = (f"CONNECT 127.0.0.1:{proxy.port}, refused the tunnel with 401 Unauthorized: "
               "it wants (other) credentials")
    wait_for(lambda: refusal in client.log_text(), timeout=20,
             what="the refusal in the client's log", watch=[client])
    assert "wrong-password" not in logged(client)
    assert FQDN not in proxy.clients()


def test_environment_proxy_is_used_and_no_proxy_goes_around_it(stack: Stack) -> None:
    """http_proxy from the environment; NO_PROXY naming the proxy's address bypasses it."""
    address = outbound_address()
    if address is None:
        pytest.skip("this host has no address but loopback, which is never proxied "
                    "from the environment")
    tinyproxy = start_tinyproxy(stack)
    exporter = stack.exporter("site")
    proxy = stack.proxy(interface=address)

    around = start_client(stack, proxy, exporter.port, name="around",
                          env={"HTTP_PROXY": tinyproxy.url, "NO_PROXY": f"localhost,{address}"})
    assert_scraped(proxy, exporter.port, "site")
    assert tinyproxy.requests() == []
    around.stop()

    start_client(stack, proxy, exporter.port, name="through", fqdn="node2.example",
                 env={"http_proxy": tinyproxy.url, "no_proxy": "other.example,10.0.0.0/8"})
    assert_scraped(proxy, exporter.port, "site", "node2.example")
    assert proxied_requests(tinyproxy, proxy) == {
        f"POST {proxy.url}/poll HTTP/1.1", f"POST {proxy.url}/push HTTP/1.1"}


def test_loopback_proxy_urls_ignore_the_environment(stack: Stack) -> None:
    """As Go's net/http: HTTP_PROXY does not apply to 127.0.0.1 (the flag would)."""
    tinyproxy = start_tinyproxy(stack)
    exporter = stack.exporter("site")
    proxy = stack.proxy()
    start_client(stack, proxy, exporter.port, env={"HTTP_PROXY": tinyproxy.url})

    assert_scraped(proxy, exporter.port, "site")
    assert tinyproxy.requests() == []


def test_targets_go_through_a_proxy_only_when_asked(stack: Stack) -> None:
    """--target-http-proxy: each target connection is a CONNECT tunnel; the link stays direct."""
    exporter = stack.exporter("site")
    tinyproxy = start_tinyproxy(stack, credentials=("alice", PASSWORD),
                                connect_ports=[exporter.port])
    proxy = stack.proxy()
    url = f"http://alice:{ENCODED}@127.0.0.1:{tinyproxy.port}"
    client = start_client(stack, proxy, exporter.port, extra=["--target-http-proxy", url])

    assert_scraped(proxy, exporter.port, "site")
    assert set(tinyproxy.requests()) == {f"CONNECT 127.0.0.1:{exporter.port} HTTP/1.1"}
    assert f"Targets are scraped through the HTTP proxy http://127.0.0.1:{tinyproxy.port}" \
        in logged(client)
    for secret in (PASSWORD, ENCODED):
        assert secret not in logged(client)
