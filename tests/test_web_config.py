"""
``--web.config.file``: exporter-toolkit's documented examples read as written, every
field mapped, bad files refused in one line naming the field; and a real proxy serving
TLS, basic auth and headers from one, read with curl and re-read on SIGHUP.
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared.web_config import TLSServerConfig, WebConfig, load_web_config, parse_web_config
from tests.harness.credentials import fast_hash, write_web_config
from tests.harness.exporter import Page
from tests.harness.processes import subprocess_env, twistd_argv
from tests.harness.stack import Proxy, Stack
from tests.harness.waiting import free_port, wait_for

#: exporter-toolkit's docs/web-config.yml, as its documentation gives it.
DOCUMENTED_EXAMPLE = """\
# TLS and basic authentication configuration example.
#
# Additionally, a certificate and a key file are needed.
tls_server_config:
  cert_file: server.crt
  key_file: server.key

# Usernames and passwords required to connect.
# Passwords are hashed with bcrypt: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md#about-bcrypt.
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m
"""

#: Every field of the documented schema that pushprox honours.
EVERY_FIELD = """\
tls_server_config:
  cert_file: /etc/pushprox/proxy.crt
  key_file: proxy.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: clients-ca.crt
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
  prefer_server_cipher_suites: true
http_server_config:
  http2: true
  headers:
    Content-Security-Policy: default-src 'self'
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1; mode=block
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
"""


class ParseTests(SynchronousTestCase):
    """What a web configuration file says, and what it may not say."""

    def test_documented_example_as_written(self) -> None:
        """The documentation's example: files relative to the file's directory, two users."""
        self.assertEqual(parse_web_config(DOCUMENTED_EXAMPLE, "/etc/node"), WebConfig(
            tls=TLSServerConfig(cert_file="/etc/node/server.crt",
                                key_file="/etc/node/server.key"),
            users={"alice": b"$2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze",
                   "bob": b"$2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m"}))

    def test_every_field(self) -> None:
        """Each documented field pushprox honours lands where it belongs."""
        web = parse_web_config(EVERY_FIELD, "/etc/pushprox")
        self.assertEqual(web.tls, TLSServerConfig(
            cert_file="/etc/pushprox/proxy.crt", key_file="/etc/pushprox/proxy.key",
            client_certificate=True, client_ca_file="/etc/pushprox/clients-ca.crt",
            min_version="TLS12", max_version="TLS13",
            cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                           "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")))
        self.assertEqual(web.headers, (
            ("Content-Security-Policy", "default-src 'self'"), ("X-Frame-Options", "deny"),
            ("X-Content-Type-Options", "nosniff"), ("X-XSS-Protection", "1; mode=block"),
            ("Strict-Transport-Security", "max-age=31536000")))
        self.assertEqual(list(web.users or {}), ["prometheus"])

    def test_empty_and_plain_files(self) -> None:
        """An empty file, or TLS without files, changes nothing (plain HTTP, no auth)."""
        for text in ("", "tls_server_config: {}\n", "basic_auth_users:\n"):
            self.assertEqual(parse_web_config(text, "/"), WebConfig(), text)

    def test_bad_files_are_refused_naming_the_field(self) -> None:
        """Unknown fields, unsupported ones and bad values: one line each, naming them."""
        tls = "tls_server_config:\n  cert_file: c\n  key_file: k\n"
        for text, reason in (
            ("basic_auth_user:\n  a: b\n", "unknown field basic_auth_user"),
            (tls + "  cert_fle: x\n", "unknown field tls_server_config.cert_fle"),
            ("http_server_config:\n  http3: true\n", "unknown field http_server_config.http3"),
            (tls + "  curve_preferences: [X25519]\n",
             "tls_server_config.curve_preferences: not supported by pushprox (OpenSSL "
             "chooses the curves)"),
            (tls + "  client_allowed_sans: [a]\n",
             "tls_server_config.client_allowed_sans: not supported by pushprox"),
            ("rate_limit:\n  interval: 1s\n", "rate_limit: not supported by pushprox"),
            ("tls_server_config:\n  cert_file: c\n", "tls_server_config: missing key_file"),
            (tls + "  min_version: TLS10\n",
             "tls_server_config.min_version TLS10: pushprox offers TLS12 and TLS13 only"),
            (tls + "  min_version: TLS14\n",
             "tls_server_config.min_version TLS14: not one of TLS10, TLS11, TLS12, TLS13"),
            (tls + "  min_version: TLS13\n  max_version: TLS12\n",
             "tls_server_config: max_version TLS12 is below min_version TLS13"),
            (tls + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
             "tls_server_config.cipher_suites: unknown TLS 1.2 cipher suite "
             "TLS_RSA_WITH_RC4_128_SHA (IANA names, e.g. "
             "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"),
            (tls + "  client_auth_type: RequireAnyClientCert\n",
             "tls_server_config.client_auth_type RequireAnyClientCert: not one of "
             "NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert (the others "
             "verify nothing)"),
            (tls + "  client_auth_type: RequireAndVerifyClientCert\n",
             "tls_server_config.client_auth_type RequireAndVerifyClientCert needs "
             "client_ca_file"),
            (tls + "  client_ca_file: ca.crt\n",
             "tls_server_config: client_ca_file without a client_auth_type that verifies "
             "(VerifyClientCertIfGiven, RequireAndVerifyClientCert)"),
            ("http_server_config:\n  headers:\n    Server: me\n",
             "http_server_config.headers: Server cannot be set (only Content-Security-Policy, "
             "X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, "
             "Strict-Transport-Security)"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
             "http_server_config.headers.X-Frame-Options allow: not one of deny, sameorigin"),
            ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice: not a bcrypt hash"),
            ("tls_server_config: [a]\n", "tls_server_config is not a mapping"),
            ("a: [\n", "not YAML (line 2): expected the node content, but found '<stream end>'"),
        ):
            with self.assertRaises(ValueError) as raised:
                parse_web_config(text, "/")
            self.assertEqual(str(raised.exception), reason, text)

    def test_file_errors_name_the_file(self) -> None:
        """A missing or bad file is refused with its name."""
        directory = Path(tempfile.mkdtemp(prefix="pushprox-web-"))
        self.addCleanup(shutil.rmtree, directory)
        path = directory / "web.yml"
        with self.assertRaises(ValueError) as raised:
            load_web_config(str(path))
        self.assertEqual(str(raised.exception), f"cannot read web configuration file {path}: "
                                                "No such file or directory")
        path.write_text("tls_server_config:\n  cert_file: c\n")
        with self.assertRaises(ValueError) as raised:
            load_web_config(str(path))
        self.assertEqual(str(raised.exception),
                         f"web configuration file {path}: tls_server_config: missing key_file")


def curl(url: str, *args: str) -> tuple[int, str, str]:
    """curl ``url``: the status curl read, the head as it arrived and the body."""
    with tempfile.TemporaryDirectory(prefix="pushprox-curl-") as directory:
        head, body = Path(directory) / "head", Path(directory) / "body"
        done = subprocess.run(
            ["curl", "-sS", "-D", str(head), "-o", str(body), "-w", "%{http_code}",
             "--max-time", "20", *args, url],
            capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return (int(done.stdout), head.read_bytes().decode("utf-8"),
                body.read_bytes().decode("utf-8"))


@pytest.mark.processes
class WebConfigProcessTests(SynchronousTestCase):
    """A real proxy from a web configuration file, read with curl."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pushprox-web-"))
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.stack = Stack(self.directory / "processes")
        self.addCleanup(self.stack.stop_all)
        self.processes = self.stack

    def test_tls_basic_auth_and_headers_from_the_file(self) -> None:
        """
        The file's certificate serves the tcp: listener over TLS, its users guard /metrics
        and /clients, its headers go on their answers; a client polls over it; SIGHUP takes
        new users, and a bad file is refused while the old one stays.
        """
        ca = self.stack.web_config_certificate(self.directory)
        headers = {"X-Frame-Options": "deny",
                   "Strict-Transport-Security": "max-age=31536000"}
        web = write_web_config(self.directory, users={"alice": "wonderland"}, headers=headers)
        port = free_port()
        proxy = self.stack.start("proxy", [
            *twistd_proxy(), "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--web.config.file", str(web)])
        base = f"https://127.0.0.1:{port}"
        trust = ("--cacert", ca.cert_path)
        wait_for(lambda: curl(base + "/-/healthy", *trust)[0] == 200, timeout=30,
                 what="the proxy over TLS", watch=[proxy])
        for path in ("/metrics", "/clients"):
            status, head, _ = curl(base + path, *trust)
            self.assertEqual(status, 401, head)
            self.assertIn('WWW-Authenticate: Basic realm="pushprox"', head)
            self.assertEqual(curl(base + path, *trust, "-u", "alice:wrong")[0], 401)
            status, head, body = curl(base + path, *trust, "-u", "alice:wonderland")
            self.assertEqual(status, 200, body)
            self.assertIn("X-Frame-Options: deny\r\n", head)
            self.assertIn("Strict-Transport-Security: max-age=31536000\r\n", head)
        self.assertIn("pushprox_http_requests_total",
                      curl(base + "/metrics", *trust, "-u", "alice:wonderland")[2])
        running = Proxy(port, proxy, True, ca.cert_path,
                        [("Authorization", "Basic " + base64.b64encode(
                            b"alice:wonderland").decode())])
        exporter = self.stack.exporter("pages", pages={
            "/metrics": Page(b"up_through_web_config 1\n", [("Content-Type", "text/plain")])})
        self.stack.client(running, "node1.example", [exporter.port],
                          extra=["--tls-cacert", ca.cert_path])
        status, _, body = curl(f"http://node1.example:{exporter.port}/metrics", *trust,
                               "--proxy", base, "--proxy-cacert", ca.cert_path)
        self.assertEqual((status, body), (200, "up_through_web_config 1\n"))

        write_web_config(self.directory, users={"bob": "builder"}, headers=headers)
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloaded" in proxy.log_text(), timeout=30,
                 what="the reload", watch=[proxy])
        self.assertIn("--web.config.file", proxy.log_text())
        self.assertEqual(curl(base + "/clients", *trust, "-u", "bob:builder")[0], 200)
        self.assertEqual(curl(base + "/clients", *trust, "-u", "alice:wonderland")[0], 401)
        web.write_text("basic_auth_users:\n  bob: plain\n")
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: "refused --web.config.file" in proxy.log_text(), timeout=30,
                 what="the refusal", watch=[proxy])
        self.assertIn(f"SIGHUP: --web.config.file not reloaded, the one in force stays: web "
                      f"configuration file {web}: basic_auth_users.bob: not a bcrypt hash",
                      proxy.log_text())
        self.assertEqual(curl(base + "/clients", *trust, "-u", "bob:builder")[0], 200)
        self.assertTrue(proxy.alive)

    def test_the_clients_metrics_listener_from_the_file(self) -> None:
        """The client's --metrics-listen serves TLS, wants the file's users, sends its
        headers on every answer (a 404 and a 405 in one line, HEAD's head); SIGHUP takes
        new users and headers."""
        ca = self.stack.certificate_authority()
        issued = ca.issue("client", ["127.0.0.1", "localhost"], client=False)
        web = self.directory / "web.yml"

        def write(header: str, user: str, password: bytes) -> None:
            web.write_text(textwrap.dedent(f"""\
                tls_server_config:
                  cert_file: {issued.cert}
                  key_file: {issued.key}
                http_server_config:
                  headers:
                    {header}
                basic_auth_users:
                  {user}: {fast_hash(password).decode()}
                """))

        write("X-Content-Type-Options: nosniff", "prometheus", b"scraper")
        proxy = self.stack.proxy()
        port = free_port()
        client = self.stack.client(proxy, "node1.example", [9100], extra=[
            "--metrics-listen", f"tcp:{port}:interface=127.0.0.1",
            "--web.config.file", str(web)])
        url = f"https://127.0.0.1:{port}/metrics"
        trust = ("--cacert", ca.cert_path)
        wait_for(lambda: curl(url, *trust)[0] == 401, timeout=30,
                 what="the client's metrics over TLS", watch=[client.process])
        self.assertEqual(curl(url, *trust, "-u", "prometheus:wrong")[0], 401)
        status, head, body = curl(url, *trust, "-u", "prometheus:scraper")
        self.assertEqual(status, 200, body)
        self.assertIn("X-Content-Type-Options: nosniff\r\n", head)
        self.assertIn("pushprox_client_scrapes_total", body)
        base = f"https://127.0.0.1:{port}"
        status, head, body = curl(base + "/other", *trust)
        self.assertEqual((status, body), (404, "not found: this is a PushProx client's "
                                               "metrics listener (endpoint /metrics)\n"))
        self.assertIn("X-Content-Type-Options: nosniff\r\n", head)
        status, head, body = curl(url, *trust, "-X", "POST", "-d", "x=1")
        self.assertEqual((status, body), (405, "POST is not served at /metrics: use GET, HEAD\n"))
        self.assertIn("Allow: GET, HEAD\r\n", head)
        # curl -I writes the head where the body would go: HEAD's answer is its head alone.
        status, head, body = curl(url, *trust, "-I", "-u", "prometheus:scraper")
        self.assertEqual((status, body), (200, head))
        self.assertIn("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", head)

        write("X-Frame-Options: deny", "bob", b"builder")
        client.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloaded" in client.process.log_text(), timeout=30,
                 what="the reload", watch=[client.process])
        self.assertEqual(curl(url, *trust, "-u", "prometheus:scraper")[0], 401)
        status, head, body = curl(url, *trust, "-u", "bob:builder")
        self.assertEqual(status, 200, body)
        self.assertIn("X-Frame-Options: deny\r\n", head)
        self.assertNotIn("X-Content-Type-Options", head)

    def test_a_bad_file_stops_the_start_in_one_line(self) -> None:
        """An unknown field: the proxy does not start, and says which field."""
        web = self.directory / "web.yml"
        web.write_text("tls_server_config:\n  certfile: x\n")
        done = subprocess.run([*twistd_proxy(), "--web.config.file", str(web)],
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=self.directory, env=subprocess_env())
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.splitlines()[0],
                         f"twistd pushprox-proxy: web configuration file {web}: unknown field "
                         "tls_server_config.certfile")


def twistd_proxy() -> list[str]:
    """``twistd -n pushprox-proxy`` as the tests run it."""
    return twistd_argv("pushprox-proxy", [])
