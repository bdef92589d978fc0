"""
Settings re-read from their files: the registry on a clock, a TLS listener's certificate
renewed under a held poll, and SIGHUP on the real programs with good and bad files.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushprox.shared import wire
from pushprox.shared.auth import ClientAuth
from pushprox.shared.reload import Reloader, ReloadOnHangup, WatchFiles
from tests.harness.exporter import Page
from tests.harness.rawhttp import (
    RawConnection,
    http_request_bytes,
    scrape_request,
)
from tests.harness.stack import Proxy, Stack
from tests.harness.waiting import wait_for
from tests.tlsfixtures import IssuedCertificate

TOKEN_1 = "node1-first-token-0123456789"
TOKEN_2 = "node1-second-token-987654321"
FQDN = "node1.example"
PAGE = b"renewed_certificate_test 1\n"


def _directory(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="pushprox-reload-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def _replace(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` by rename, as cert-manager and certbot do."""
    temporary = path + ".new"
    Path(temporary).write_bytes(data)
    os.rename(temporary, path)


@implementer(ILogObserver)
class _Events:
    """Log events of the global publisher while a test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def lines(self, level: LogLevel) -> list[str]:
        """The formatted events of ``level`` from pushprox.shared.reload."""
        return [formatEvent(e) for e in self.events
                if e.get("log_level") is level
                and str(e.get("log_namespace", "")).startswith("pushprox.shared.reload")]


class ReloaderTests(SynchronousTestCase):
    """The registry: SIGHUP re-reads everything, changed files are re-read by themselves."""

    def setUp(self) -> None:
        self.directory = _directory(self)
        self.tokens = str(self.directory / "tokens")
        Path(self.tokens).write_text(f"{FQDN} {TOKEN_1}\n")
        self.auth = ClientAuth(token_file=self.tokens)
        self.reloader = Reloader()
        self.reloader.register("--client-tokens", self.auth.reload, watch=[self.tokens])
        self.log = _Events(self)

    def principal(self, token: str) -> str | None:
        """Who ``token`` polls as, or None when it is refused."""
        try:
            return self.auth.poll_principal(FQDN, f"Bearer {token}".encode(), None)
        except Exception:
            return None

    def test_reload_all_says_what_was_reloaded(self) -> None:
        """SIGHUP's reload re-reads the file and says so in one line."""
        _replace(self.tokens, f"{FQDN} {TOKEN_2}\n".encode())
        self.assertEqual(self.reloader.reload_all(), (["--client-tokens"], []))
        self.assertEqual((self.principal(TOKEN_1), self.principal(TOKEN_2)),
                         (None, f"token:{FQDN}"))
        self.assertEqual(self.log.lines(LogLevel.info), ["SIGHUP: reloaded --client-tokens"])
        self.assertEqual(self.log.lines(LogLevel.error), [])

    def test_a_bad_file_is_refused_and_the_old_one_stays(self) -> None:
        """A broken new file: one error line with the reason, the tokens in force stay."""
        _replace(self.tokens, f"{FQDN} short\n".encode())
        self.assertEqual(self.reloader.reload_all(), ([], ["--client-tokens"]))
        self.assertEqual(self.principal(TOKEN_1), f"token:{FQDN}")
        self.assertEqual(self.log.lines(LogLevel.error), [
            "SIGHUP: --client-tokens not reloaded, the one in force stays: "
            f"{self.tokens}:1: token shorter than 16 characters"])
        self.assertEqual(self.log.lines(LogLevel.info),
                         ["SIGHUP: reloaded nothing; refused --client-tokens"])

    def test_nothing_registered(self) -> None:
        """With nothing read from files, SIGHUP says so and does nothing else."""
        self.assertEqual(Reloader().reload_all(), ([], []))
        self.assertEqual(self.log.lines(LogLevel.info),
                         ["SIGHUP: nothing is read from files, nothing to reload"])

    def test_changed_files_are_reloaded_once(self) -> None:
        """A file replaced by rename is re-read at the next look, and only then."""
        calls: list[str] = []
        reloader = Reloader()
        reloader.register("unwatched", lambda: calls.append("unwatched"))
        reloader.register("tokens", lambda: calls.append("tokens"), watch=[self.tokens])
        self.assertEqual(reloader.check_files(), [])
        _replace(self.tokens, f"{FQDN} {TOKEN_2}\n".encode())
        self.assertEqual(reloader.check_files(), ["tokens"])
        self.assertEqual(reloader.check_files(), [])
        self.assertEqual(calls, ["tokens"])

    def test_a_bad_changed_file_is_said_once_and_retried_when_it_changes(self) -> None:
        """
        A changed file that is refused is said once; it is tried again when it changes
        again (a certificate renewed before its key), not at every look.
        """
        _replace(self.tokens, f"{FQDN} short\n".encode())
        self.assertEqual(self.reloader.check_files(), [])
        self.assertEqual(self.reloader.check_files(), [])
        self.assertEqual(self.log.lines(LogLevel.warn), [
            "--client-tokens: changed files refused, the one in force stays: "
            f"{self.tokens}:1: token shorter than 16 characters"])
        self.assertEqual(self.principal(TOKEN_1), f"token:{FQDN}")
        _replace(self.tokens, f"{FQDN} {TOKEN_2}\n".encode())
        self.assertEqual(self.reloader.check_files(), ["--client-tokens"])
        self.assertEqual(self.principal(TOKEN_2), f"token:{FQDN}")
        self.assertEqual(self.log.lines(LogLevel.info), [
            f"--client-tokens: changed files reloaded ({self.tokens})"])

    def test_a_symlink_swapped_to_another_file(self) -> None:
        """A link moved to a new file (as a Kubernetes secret volume does) is a change."""
        first, second = self.directory / "first", self.directory / "second"
        first.write_text(f"{FQDN} {TOKEN_1}\n")
        second.write_text(f"{FQDN} {TOKEN_2}\n")
        os.utime(second, ns=(os.stat(first).st_atime_ns, os.stat(first).st_mtime_ns))
        link = str(self.directory / "link")
        os.symlink(first, link)
        auth = ClientAuth(token_file=link)
        reloader = Reloader()
        reloader.register("linked", auth.reload, watch=[link])
        os.symlink(second, link + ".new")
        os.rename(link + ".new", link)
        self.assertEqual(reloader.check_files(), ["linked"])
        self.assertEqual(auth.poll_principal(FQDN, f"Bearer {TOKEN_2}".encode(), None),
                         f"token:{FQDN}")

    def test_watch_files_looks_every_interval_while_running(self) -> None:
        """WatchFiles looks at the files every interval, from start to stop only."""
        clock = Clock()
        watch = WatchFiles(self.reloader, clock, 10.0)
        watch.startService()
        _replace(self.tokens, f"{FQDN} {TOKEN_2}\n".encode())
        clock.advance(9.9)
        self.assertIsNotNone(self.principal(TOKEN_1))
        clock.advance(0.1)
        self.assertIsNone(self.principal(TOKEN_1))
        watch.stopService()
        _replace(self.tokens, f"{FQDN} {TOKEN_1}\n".encode())
        clock.advance(100)
        self.assertIsNone(self.principal(TOKEN_1))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sighup_calls_the_reload_and_the_previous_handler_comes_back(self) -> None:
        """SIGHUP reloads (in the reactor thread) while running; stopping restores."""
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        ran: list[object] = []

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                ran.append(f(*args))

        hangup = ReloadOnHangup(self.reloader.reload_all, Reactor())
        hangup.startService()
        _replace(self.tokens, f"{FQDN} {TOKEN_2}\n".encode())
        signal.raise_signal(signal.SIGHUP)
        self.assertEqual(ran, [(["--client-tokens"], [])])
        hangup.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)


def _peer_serial(connection: RawConnection) -> int:
    """The serial number of the certificate the server showed on ``connection``."""
    assert isinstance(connection.sock, ssl.SSLSocket)
    der = connection.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial_of(port: int, ca_file: str) -> int:
    """The serial number of the certificate a new handshake with 127.0.0.1:port shows."""
    context = ssl.create_default_context(cafile=ca_file)
    with RawConnection(port, tls=context) as connection:
        return _peer_serial(connection)


def _serial(certificate: IssuedCertificate) -> int:
    return x509.load_pem_x509_certificate(Path(certificate.cert).read_bytes()).serial_number


@pytest.mark.processes
class RenewedCertificateTests(SynchronousTestCase):
    """Real processes: certificate files renewed under a running proxy, with no signal."""

    def setUp(self) -> None:
        self.stack = Stack(_directory(self))
        self.addCleanup(self.stack.stop_all)
        #: Looked at by tests/conftest.py to attach the logs of a failed test.
        self.processes = self.stack
        self.ca = self.stack.certificate_authority("renewal-ca")

    def tls_proxy(self, *extra: str) -> tuple[Proxy, IssuedCertificate]:
        """A proxy on ssl: looking at its files every 0.2 s, and its certificate."""
        certificate = self.ca.issue("proxy", ["127.0.0.1", "localhost"], client=False)
        proxy = self.stack.proxy(certificate=certificate, trust=self.ca.cert_path,
                                 extra=["--tls-reload-interval", "0.2", *extra])
        return proxy, certificate

    def renew(self, certificate: IssuedCertificate) -> int:
        """Replace the certificate and key files by rename; return the new serial."""
        renewed = self.ca.issue("renewed", ["127.0.0.1", "localhost"], client=False)
        _replace(certificate.key, Path(renewed.key).read_bytes())
        _replace(certificate.cert, Path(renewed.cert).read_bytes())
        return _serial(renewed)

    def test_new_handshakes_show_the_new_serial_while_a_held_poll_gets_its_scrape(
        self,
    ) -> None:
        """
        A poll held on a connection made with the old certificate still gets its scrape
        and pushes its answer after the files were renewed; new handshakes show the new
        certificate, and a real client keeps working.
        """
        proxy, certificate = self.tls_proxy()
        old_serial = _serial(certificate)
        self.assertEqual(_serial_of(proxy.port, self.ca.cert_path), old_serial)
        poller = RawConnection(proxy.port, tls=ssl.create_default_context(
            cafile=self.ca.cert_path))
        self.addCleanup(poller.close)
        self.assertEqual(_peer_serial(poller), old_serial)
        poller.send(http_request_bytes("POST", "/poll", [("Content-Type", "")],
                                       b"held.example"))
        wait_for(lambda: "held.example" in proxy.clients(), timeout=20,
                 what="held.example in /clients", watch=[proxy.process])

        new_serial = self.renew(certificate)
        self.assertNotEqual(new_serial, old_serial)
        wait_for(lambda: _serial_of(proxy.port, self.ca.cert_path) == new_serial,
                 timeout=20, what="the new certificate in a new handshake",
                 watch=[proxy.process])

        scraper = RawConnection(proxy.port, tls=ssl.create_default_context(
            cafile=self.ca.cert_path))
        self.addCleanup(scraper.close)
        scraper.send(scrape_request("http://held.example:9100/metrics", 10.0))
        answer = poller.read_response(timeout=10)
        self.assertEqual(answer.status, 200, answer.text)
        scrape_id = wire.decode_scrape_request(answer.body).scrape_id.encode()
        pushed_response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                           b"Content-Length: %d\r\nId: %s\r\n\r\n%s"
                           % (len(PAGE), scrape_id, PAGE))
        poller.send(http_request_bytes("POST", "/push", [], pushed_response))
        self.assertEqual(poller.read_response(timeout=10).status, 200)
        scraped = scraper.read_response(timeout=10)
        self.assertEqual((scraped.status, scraped.body), (200, PAGE))
        self.assertIn("certificates of --listen pushprox-tls:", proxy.process.log_text())

        exporter = self.stack.exporter("pages", pages={
            "/metrics": Page(PAGE, [("Content-Type", "text/plain")])})
        client = self.stack.client(proxy, FQDN, [exporter.port],
                                   extra=["--tls-cacert", self.ca.cert_path])
        self.renew(certificate)
        response = scrape_via_tls_proxy(proxy, f"http://{FQDN}:{exporter.port}/metrics")
        self.assertEqual((response.status, response.body), (200, PAGE))
        self.assertTrue(client.process.alive)

    def test_a_half_renewed_pair_is_refused_until_the_key_follows(self) -> None:
        """A certificate renewed before its key is refused (one line), then taken."""
        proxy, certificate = self.tls_proxy()
        old_serial = _serial(certificate)
        renewed = self.ca.issue("renewed", ["127.0.0.1", "localhost"], client=False)
        _replace(certificate.cert, Path(renewed.cert).read_bytes())
        wait_for(lambda: "changed files refused" in proxy.process.log_text(), timeout=20,
                 what="the refusal in the log", watch=[proxy.process])
        self.assertEqual(_serial_of(proxy.port, self.ca.cert_path), old_serial)
        _replace(certificate.key, Path(renewed.key).read_bytes())
        wait_for(lambda: _serial_of(proxy.port, self.ca.cert_path) == _serial(renewed),
                 timeout=20, what="the renewed certificate", watch=[proxy.process])
        refusals = [line for line in proxy.process.log_text().splitlines()
                    if "changed files refused" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("does not match certificate file", refusals[0])


def scrape_via_tls_proxy(proxy: Proxy, url: str) -> Any:
    """A scrape through an https proxy, as Prometheus with the proxy's CA sends it."""
    context = ssl.create_default_context(cafile=proxy.ca_file)
    with RawConnection(proxy.port, tls=context) as connection:
        connection.send(scrape_request(url, 10.0))
        return connection.read_response(timeout=20)


@pytest.mark.processes
class HangupTests(SynchronousTestCase):
    """Real processes: SIGHUP reloads and never stops either program."""

    def setUp(self) -> None:
        self.directory = _directory(self)
        self.stack = Stack(self.directory / "processes")
        self.addCleanup(self.stack.stop_all)
        self.processes = self.stack

    def wait_log(self, process: Any, text: str, count: int = 1) -> None:
        """Wait until ``text`` is in ``process``'s log ``count`` times."""
        wait_for(lambda: process.log_text().count(text) >= count, timeout=20,
                 what=f"{text!r} in the log of {process.name}", watch=[process])

    def test_proxy_without_files_survives_sighup(self) -> None:
        """A plain proxy says there is nothing to reload and keeps serving."""
        proxy = self.stack.proxy()
        proxy.process.send_signal(signal.SIGHUP)
        self.wait_log(proxy.process, "SIGHUP: nothing is read from files, nothing to reload")
        self.assertTrue(proxy.healthy())

    def test_proxy_reloads_tokens_and_refuses_a_bad_file(self) -> None:
        """New tokens work after SIGHUP; a broken file is refused and the old tokens stay."""
        tokens = self.directory / "tokens"
        tokens.write_text(f"{FQDN} {TOKEN_1}\n")
        proxy = self.stack.proxy(extra=["--client-tokens", str(tokens)])

        def poll_status(token: str) -> int:
            with RawConnection(proxy.port) as connection:
                connection.send(http_request_bytes(
                    "POST", "/poll", [("Authorization", f"Bearer {token}"),
                                      ("X-PushProx-Poll-Timeout", "0.1")],
                    FQDN.encode()))
                return connection.read_response(timeout=10).status

        _replace(str(tokens), f"{FQDN} {TOKEN_2}\n".encode())
        proxy.process.send_signal(signal.SIGHUP)
        self.wait_log(proxy.process, "SIGHUP: reloaded --client-tokens")
        self.assertEqual((poll_status(TOKEN_1), poll_status(TOKEN_2)), (401, 204))
        _replace(str(tokens), b"garbage\n")
        proxy.process.send_signal(signal.SIGHUP)
        self.wait_log(proxy.process, "SIGHUP: reloaded nothing; refused --client-tokens")
        self.assertIn(f"SIGHUP: --client-tokens not reloaded, the one in force stays: "
                      f"{tokens}:1:", proxy.process.log_text())
        self.assertEqual(poll_status(TOKEN_2), 204)
        self.assertTrue(proxy.process.alive)

    def test_client_reloads_its_token_and_its_tls_files(self) -> None:
        """
        The client re-reads its token and TLS files on SIGHUP and keeps polling; a bad
        token file is refused and the token in force stays.
        """
        ca = self.stack.certificate_authority()
        tokens = self.directory / "tokens"
        tokens.write_text(f"{FQDN} {TOKEN_1}\n{FQDN} {TOKEN_2}\n")
        certificate = ca.issue("proxy", ["127.0.0.1", "localhost"], client=False)
        proxy = self.stack.proxy(certificate=certificate, trust=ca.cert_path,
                                 extra=["--client-tokens", str(tokens)])
        token_file = self.directory / "token"
        token_file.write_text(TOKEN_1 + "\n")
        exporter = self.stack.exporter("pages", pages={
            "/metrics": Page(PAGE, [("Content-Type", "text/plain")])})
        client = self.stack.client(proxy, FQDN, [exporter.port], extra=[
            "--tls-cacert", ca.cert_path, "--proxy-token-file", str(token_file)])
        url = f"http://{FQDN}:{exporter.port}/metrics"
        _replace(str(token_file), (TOKEN_2 + "\n").encode())
        client.process.send_signal(signal.SIGHUP)
        self.wait_log(client.process, "SIGHUP: reloaded --tls-cacert/--tls-cert/--tls-key, "
                                      "--proxy-token-file/--target-bearer-token-file")
        # The proxy now accepts only the new token: the client's next requests carry it.
        _replace(str(tokens), f"{FQDN} {TOKEN_2}\n".encode())
        proxy.process.send_signal(signal.SIGHUP)
        self.wait_log(proxy.process, f"SIGHUP: reloaded certificates of --listen "
                                     f"pushprox-tls:{proxy.port}, --client-tokens")
        response = scrape_via_tls_proxy(proxy, url)
        self.assertEqual((response.status, response.body), (200, PAGE))
        token_file.write_text("")
        client.process.send_signal(signal.SIGHUP)
        self.wait_log(client.process, "refused --proxy-token-file/--target-bearer-token-file")
        self.assertIn(f"{token_file} is empty", client.process.log_text())
        response = scrape_via_tls_proxy(proxy, url)
        self.assertEqual((response.status, response.body), (200, PAGE))
        self.assertTrue(client.process.alive)
