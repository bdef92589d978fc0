"""
A ``pushprox-proxy`` or ``pushprox-client`` process whose options name no TLS, as a command or
under ``twistd``, does not load pyOpenSSL, cryptography or service-identity, and as a command
not ``asyncio`` either (``pushprox.shared.footprint``): real processes, their
``/proc/PID/maps`` read while they serve scrapes, and the Twisted fallback this relies on.
"""

from __future__ import annotations

import asyncio
import http.client
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared.footprint import (
    DeferredSSL,
    iscoroutine,
    names_tls,
    without_tls_libraries,
)
from pushprox.shared.twistd_footprint import twistd_without_tls
from tests.harness.exporter import Page, start_exporter
from tests.harness.processes import (
    Process,
    ProcessGroup,
    subprocess_env,
    twistd_argv,
    twistd_command,
)
from tests.harness.rawhttp import http_request_bytes, raw_http, scrape_via_proxy
from tests.harness.waiting import free_port, port_open, wait_for
from tests.test_commands import command
from tests.tlsfixtures import make_pki

# Real processes (and subprocesses of Python) throughout.
pytestmark = pytest.mark.processes

METRICS = b"footprint_test_up 1\n"
#: The shared objects that a process holding pyOpenSSL maps: cryptography's bindings (they
#: carry their own OpenSSL) and, under older cryptography releases, its cffi backend.
TLS_OBJECTS = ("cryptography", "_cffi_backend", "/OpenSSL/", "service_identity")


#: The shared objects of OpenSSL itself and of the standard library's bindings to it
#: (``ssl`` and ``hashlib``'s ``_hashlib``).
OPENSSL_OBJECTS = ("/libcrypto.", "/libssl.", "/_ssl.", "/_hashlib.")
#: The shared object of ``asyncio``'s accelerator, where it is not built into the interpreter.
ASYNCIO_OBJECTS = () if "_asyncio" in sys.builtin_module_names else ("/_asyncio.",)


def objects_mapped(pid: int, objects: tuple[str, ...] = TLS_OBJECTS) -> list[str]:
    """The files of ``objects`` (by default ``TLS_OBJECTS``) that process ``pid`` has
    mapped."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
             if len(line.split()) >= 6}
    return sorted(p for p in paths if any(name in p for name in objects))


def run_python(code: str, *, without_pushprox_variables: bool = False
               ) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (its imports its own), which must succeed; with
    ``without_pushprox_variables``, none of the ``PUSHPROX_*`` variables the tests run
    with (an unknown one is looked up among the known names, with ``difflib``)."""
    env = subprocess_env()
    if without_pushprox_variables:
        env = {name: value for name, value in env.items() if not name.startswith("PUSHPROX_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)


def printed_lines(code: str) -> list[str]:
    """The lines ``code`` printed in a fresh interpreter, which must have written nothing to
    its standard error."""
    result = run_python(code)
    assert result.stderr == "", result.stderr
    return result.stdout.splitlines()


class NamesTLSTests(SynchronousTestCase):
    """Which command lines and environments keep the TLS libraries."""

    def test_plain_options_name_no_tls(self) -> None:
        """A plain proxy and client: no TLS word anywhere."""
        self.assertFalse(names_tls(["--listen", "tcp:8080", "--scrape-auth", "users.htpasswd"],
                                   {"PATH": "/usr/bin", "PUSHPROX_LOG_LEVEL": "debug"}))
        self.assertFalse(names_tls(["--proxy-url", "http://proxy:8080/", "--fqdn", "node1"],
                                   {"HTTPS_PROXY": "https://egress:3128"}))

    def test_each_tls_option_keeps_the_libraries(self) -> None:
        """Every way of asking for TLS, on the command line or in PUSHPROX_* variables."""
        for argv in (["--listen", "ssl:8443:privateKey=k.pem:certKey=c.pem"],
                     ["--port", "pushprox-mtls:8443:clientCA=ca.pem"],
                     ["--client-ca", "ca.pem"], ["--proxy-url", "HTTPS://proxy:8443/"],
                     ["--tls.cacert=ca.pem"], ["--target-tls-insecure-skip-verify"],
                     ["--redis", "rediss://redis:6380"], ["--redis", "redis://redis"],
                     ["--web.config.file=web.yml"], ["--web-config", "web.yml"]):
            self.assertTrue(names_tls(argv, {}), argv)
        self.assertTrue(names_tls([], {"PUSHPROX_TLS_CERT": "client.pem"}))
        self.assertTrue(names_tls([], {"PUSHPROX_PROXY_URL": "https://proxy/"}))
        # Upstream's variable, as the container images are given it.
        self.assertTrue(names_tls([], {"PROXY_URL": "https://proxy:8443/"}))
        self.assertTrue(names_tls([], {"PUSHPROX_WEB_CONFIG": "web.yml"}))

    def test_import_fails_only_inside_the_block(self) -> None:
        """Inside the block ``import OpenSSL`` raises ImportError; after it, it works."""
        code = ("import sys\nfrom pushprox.shared.footprint import without_tls_libraries\n"
                "with without_tls_libraries():\n"
                "    try:\n        import OpenSSL\n    except ImportError:\n"
                "        print('blocked')\n"
                "import OpenSSL\nprint('loaded', 'OpenSSL' in sys.modules)\n")
        result = run_python(code)
        self.assertEqual(result.stdout.split(), ["blocked", "loaded", "True"])
        # In this process pyOpenSSL is already loaded: the block changes nothing.
        import OpenSSL

        with without_tls_libraries():
            self.assertIs(sys.modules["OpenSSL"], OpenSSL)


class TwistdWithoutTLSTests(SynchronousTestCase):
    """Which twistd processes import our plugins' modules without the TLS libraries."""

    TWISTD = {"twisted.scripts.twistd", "pushprox"}

    def test_twistd_running_a_plain_program(self) -> None:
        """twistd's options and ours, none naming TLS, a unit's environment file's variables."""
        self.assertTrue(twistd_without_tls(
            ["--pidfile=", "-n", "pushprox-proxy", "--listen", "tcp:8080"],
            {"PUSHPROX_LOG_LEVEL": "debug"}, self.TWISTD))
        self.assertTrue(twistd_without_tls(["-n", "pushprox-client"],
                                           {"PUSHPROX_PROXY_URL": "http://proxy:8080/"},
                                           self.TWISTD))

    def test_tls_other_programs_or_not_twistd(self) -> None:
        """TLS named anywhere, another twistd plugin (or none), or a process that is not
        twistd (a test run, a program scanning plugins): everything imports as usual."""
        self.assertFalse(twistd_without_tls(
            ["-n", "pushprox-proxy", "--listen", "ssl:8443:privateKey=k.pem"], {},
            self.TWISTD))
        self.assertFalse(twistd_without_tls(["-n", "pushprox-client"],
                                            {"PUSHPROX_PROXY_URL": "https://proxy/"},
                                            self.TWISTD))
        self.assertFalse(twistd_without_tls(["-n", "web", "--port", "tcp:8080"], {},
                                            self.TWISTD))
        self.assertFalse(twistd_without_tls(["--help"], {}, self.TWISTD))
        self.assertFalse(twistd_without_tls(["pushprox-proxy"], {}, {"pushprox"}))


class TwistedFallbackTests(SynchronousTestCase):
    """
    The private detail relied on: twisted.internet.posixbase, tcp, endpoints and
    twisted.web.client import without pyOpenSSL (their ``except ImportError`` fallbacks) and
    do not load cryptography or service-identity by another way.  A Twisted release that
    drops a fallback, or loads TLS elsewhere, fails here.
    """

    def test_twisted_networking_imports_without_pyopenssl(self) -> None:
        """The modules the commands import under the block, and what they leave out."""
        code = (
            "import sys\nfrom pushprox.shared.footprint import without_tls_libraries\n"
            "with without_tls_libraries():\n"
            "    from twisted.internet import reactor\n"
            "    import twisted.internet.tcp, twisted.internet.posixbase\n"
            "    import twisted.internet.endpoints as endpoints, twisted.web.client\n"
            "    import pushprox.proxy.tap, pushprox.client.tap\n"
            "print(endpoints.TLSMemoryBIOFactory is None,\n"
            "      sorted(m for m in sys.modules if m.split('.')[0] in\n"
            "             ('OpenSSL', 'cryptography', 'service_identity',\n"
            "              'pushprox.shared.tls')))\n"
        )
        result = run_python(code)
        self.assertEqual(result.stdout.strip(), "True []")


class StandardLibraryTLSTests(SynchronousTestCase):
    """
    The standard library's ``ssl`` and ``_hashlib`` (and OpenSSL's libraries with them) stay
    out of the programs' imports, prometheus-client imported with ``DeferredSSL``; once the
    block ends they work as usual, through the stand-in too.  A release of prometheus-client
    that reads more of ``ssl`` when imported, or of Twisted that needs ``ssl``, fails here.
    """

    def test_protocol_numbers_are_ssl_s(self) -> None:
        """The stand-in's default arguments are the real protocol constants' values."""
        names = DeferredSSL.IMPORT_TIME_NAMES
        self.assertEqual(names["PROTOCOL_TLS_CLIENT"], ssl.PROTOCOL_TLS_CLIENT)
        self.assertEqual(names["PROTOCOL_TLS_SERVER"], ssl.PROTOCOL_TLS_SERVER)

    def test_programs_import_without_openssl(self) -> None:
        """Both programs, the reactor and a /metrics page rendered: no OpenSSL mapped, no
        ``ssl`` or ``_hashlib``; afterwards ``ssl``, ``hashlib`` and an HTTPS request made
        with ``http.client`` (which holds the stand-in) work, against a real server."""
        directory = Path(tempfile.mkdtemp(prefix="pushprox-footprint-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        processes = ProcessGroup(directory)
        self.addCleanup(processes.stop_all)
        pki = make_pki(str(directory / "pki"))
        _, port = start_exporter(processes, "tls", pages={"/metrics": Page(METRICS)},
                                 tls=(pki.server.cert, pki.server.key))
        code = (
            "import sys\nfrom pushprox.shared.footprint import without_tls_libraries\n"
            "with without_tls_libraries():\n"
            "    import pushprox.proxy.tap, pushprox.client.tap\n"
            "    from twisted.internet import reactor\n"
            "import prometheus_client\n"
            "counter = prometheus_client.Counter('footprint_test', '', registry=None)\n"
            "registry = prometheus_client.CollectorRegistry()\nregistry.register(counter)\n"
            "page = prometheus_client.generate_latest(registry)\n"
            "maps = open('/proc/self/maps').read()\n"
            f"print([name for name in {OPENSSL_OBJECTS!r} if name in maps],\n"
            "      [m for m in ('ssl', '_ssl', '_hashlib') if m in sys.modules],\n"
            "      b'footprint_test_total 0.0' in page)\n"
            "import hashlib, http.client, ssl\n"
            "print(hashlib.sha256(b'pushprox').hexdigest()[:12])\n"
            f"context = ssl.create_default_context(cafile={pki.ca.cert_path!r})\n"
            f"connection = http.client.HTTPSConnection('127.0.0.1', {port}, context=context)\n"
            "connection.request('GET', '/metrics')\n"
            "print(connection.getresponse().read(), type(http.client.ssl).__name__,\n"
            "      prometheus_client.exposition.ssl.PROTOCOL_TLS_SERVER is\n"
            "      ssl.PROTOCOL_TLS_SERVER)\n"
        )
        self.assertEqual(printed_lines(code), [
            "[] [] True",
            "eec9b7bc27c3",
            f"{METRICS!r} DeferredSSL True",
        ])


class AsyncioTests(SynchronousTestCase):
    """
    ``asyncio`` stays out of the programs' imports, Twisted's Deferreds imported with
    ``DeferredAsyncio``; they work as before, with the real ``asyncio`` too once something
    imports it.  A release of Twisted that takes more of ``asyncio``, or imports it elsewhere,
    fails here.
    """

    def test_iscoroutine_is_asyncio_s(self) -> None:
        """The stand-in's ``iscoroutine`` says what ``asyncio.iscoroutine`` says."""

        async def coroutine_function() -> None:
            pass

        def generator_function() -> Generator[None, None, None]:
            yield None

        class AwaitableOnly:
            def __await__(self) -> Generator[None, None, None]:
                yield None

        coroutine, generator = coroutine_function(), generator_function()
        self.addCleanup(coroutine.close)
        candidates: list[object] = [coroutine, generator, AwaitableOnly(), None, b"page",
                                    coroutine_function, [coroutine]]
        self.assertEqual([iscoroutine(c) for c in candidates],
                         [asyncio.iscoroutine(c) for c in candidates])

    def test_programs_import_without_asyncio(self) -> None:
        """Both programs and the reactor imported as the commands do, without TLS options
        and with them (each in a fresh interpreter): no ``asyncio``; coroutines and
        generators still run as Deferreds; then with the real ``asyncio``, a Deferred becomes
        a Future and a Future a Deferred."""
        code = (
            "import sys\nfrom pushprox.shared.footprint import program_imports\n"
            "with program_imports(ARGV, {}):\n"
            "    import pushprox.proxy.tap, pushprox.client.tap\n"
            "    from twisted.internet import reactor\n"
            "print('asyncio' in sys.modules, '_asyncio' in sys.modules,\n"
            "      'OpenSSL' in sys.modules)\n"
            "from twisted.internet import defer\n"
            "async def answer():\n    return await defer.succeed(42)\n"
            "@defer.inlineCallbacks\ndef doubled():\n"
            "    return (yield defer.ensureDeferred(answer())) * 2\n"
            "results = []\ndoubled().addCallback(results.append)\n"
            "print(results, 'asyncio' in sys.modules)\n"
            "import asyncio\nloop = asyncio.new_event_loop()\n"
            "future = defer.succeed('as future').asFuture(loop)\n"
            "print(loop.run_until_complete(future))\n"
            "future = loop.create_future()\n"
            "defer.Deferred.fromFuture(future).addCallback(results.append)\n"
            "future.set_result('from future')\nloop.run_until_complete(asyncio.sleep(0))\n"
            "loop.close()\nprint(results[-1])\n"
        )
        for argv, tls in (([], False), (["--tls-cert", "cert.pem"], True)):
            self.assertEqual(printed_lines(code.replace("ARGV", repr(argv))), [
                f"False False {tls}", "[84] False", "as future", "from future"])


class UnneededModulesTests(SynchronousTestCase):
    """Modules that only an error or a question needs are not imported by a start."""

    def test_programs_import_neither_importlib_metadata_nor_difflib(self) -> None:
        """Both programs assembled (not started) and their version asked:
        ``importlib.metadata`` (the version is read from the metadata file), ``difflib`` (for
        misspelt names) and Twisted's plugins (for endpoint types other than Twisted's own,
        given where an address could be) stay out."""
        code = (
            "import sys\nfrom twisted.internet import reactor\n"
            "from pushprox.proxy import tap as proxy\nfrom pushprox.client import tap as client\n"
            "from pushprox.shared.version import package_version\n"
            "options = proxy.Options()\n"
            "options.parseOptions(['--listen', 'tcp:8080', '--listen', '127.0.0.1:8081'])\n"
            "proxy.makeService(options, reactor=reactor)\n"
            "options = client.Options()\n"
            "options.parseOptions(['--proxy-url', 'http://127.0.0.1:1/'])\n"
            "client.makeService(options, reactor=reactor)\n"
            "print(package_version() != 'unknown',\n"
            "      [m for m in ('importlib.metadata', 'difflib', 'twisted.plugins.twisted_core')\n"
            "       if m in sys.modules])\n"
        )
        result = run_python(code, without_pushprox_variables=True)
        self.assertEqual(result.stdout.strip(), "True []", result.stderr)

    def test_client_metrics_listener_imports_no_web_server(self) -> None:
        """The client assembled and started, its /metrics listener listening and answering:
        ``twisted.web.server`` (and the Perspective Broker, templates and XML parser it
        imports) stays out; ``twisted.web.http``, which serves the listener, is in."""
        port = free_port()
        code = (
            "import sys\nfrom twisted.internet import reactor\n"
            "from pushprox.client import tap\noptions = tap.Options()\n"
            "options.parseOptions(['--proxy-url', 'http://127.0.0.1:1/',\n"
            f"                      '--metrics-listen', 'tcp:{port}:interface=127.0.0.1'])\n"
            "service = tap.makeService(options, reactor=reactor)\n"
            "service.privilegedStartService()\nservice.startService()\n"
            "def ask():\n"
            "    import socket\n"
            f"    with socket.create_connection(('127.0.0.1', {port})) as s:\n"
            "        s.sendall(b'GET /metrics HTTP/1.0\\r\\n\\r\\n')\n"
            "        answer = b''\n"
            "        while chunk := s.recv(65536):\n"
            "            answer += chunk\n"
            "    reactor.callFromThread(report, answer)\n"
            "def report(answer):\n"
            "    print(answer.split(b'\\r\\n')[0].decode(),\n"
            "          b'pushprox_client_scrapes_total' in answer)\n"
            "    print([m for m in ('twisted.web.server', 'twisted.spread.pb', 'xml.sax',\n"
            "                       'twisted.web.template') if m in sys.modules],\n"
            "          'twisted.web.http' in sys.modules)\n"
            "    reactor.stop()\n"
            "reactor.callWhenRunning(reactor.callInThread, ask)\n"
            "reactor.callLater(30, reactor.stop)\nreactor.run()\n"
        )
        result = run_python(code)
        self.assertEqual(result.stdout.splitlines(), ["HTTP/1.0 200 OK True", "[] True"],
                         result.stderr)


class ClusterModeFootprintTests(SynchronousTestCase):
    """Nothing of ``pushprox.proxy.cluster`` is imported by a proxy assembled without --redis."""

    def cluster_modules(self, *argv: str) -> list[str]:
        """The ``pushprox.proxy.cluster`` modules loaded by parsing ``argv`` and assembling."""
        code = (
            "import sys\nfrom twisted.internet.testing import MemoryReactorClock\n"
            "from pushprox.proxy import tap\noptions = tap.Options()\n"
            f"options.parseOptions({list(argv)!r})\n"
            "tap.makeService(options, reactor=MemoryReactorClock())\n"
            "print(*sorted(m for m in sys.modules if m.startswith('pushprox.proxy.cluster')))\n"
        )
        result = run_python(code)
        return result.stdout.split()

    def test_single_proxy_imports_no_cluster_module(self) -> None:
        """Without --redis: none; with it (the control), the replica's service among them."""
        self.assertEqual(self.cluster_modules("--listen", "tcp:0:interface=127.0.0.1"), [])
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        (directory / "token").write_text("peer-token-0123456789abcdef\n")
        with_redis = self.cluster_modules(
            "--listen", "tcp:0:interface=127.0.0.1", "--redis", "redis://127.0.0.1:1",
            "--peer-token-file", str(directory / "token"), "--peer-url", "http://127.0.0.1:1")
        self.assertIn("pushprox.proxy.cluster.service", with_redis)


class CommandFootprintTests(SynchronousTestCase):
    """The commands, run for real, with and without TLS options."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pushprox-footprint-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.processes = ProcessGroup(self.tmp)
        self.addCleanup(self.processes.stop_all)

    def start(self, name: str, argv: list[str], port: int,
              env: dict[str, str] | None = None) -> Process:
        """Start a program and wait until it accepts connections on ``port``."""
        process = self.processes.start(name, argv, env=env)
        wait_for(lambda: port_open(port), timeout=30, what=f"{name} on port {port}",
                 watch=[process])
        return process

    def start_pair(self, target_port: int, client_env: dict[str, str] | None = None,
                   twistd: bool = False) -> tuple[Process, Process, int]:
        """A proxy and a client (fqdn 127.0.0.1) without TLS options, once registered: the
        commands, or under ``twistd`` with ``twistd``."""
        def argv(program: str, args: list[str]) -> list[str]:
            return twistd_argv(program, args) if twistd else [command(program), *args]

        proxy_port, metrics_port = free_port(), free_port()
        self.client_metrics_port = metrics_port
        proxy = self.start("proxy", argv("pushprox-proxy", [
            "--listen", f"tcp:{proxy_port}:interface=127.0.0.1"]), proxy_port)
        client = self.start("client", argv("pushprox-client", [
            "--fqdn", "127.0.0.1", "--proxy-url", f"http://127.0.0.1:{proxy_port}/",
            "--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1",
            "--allow-port", str(target_port)]), metrics_port, env=client_env)
        wait_for(lambda: b"127.0.0.1" in raw_http(
            proxy_port, http_request_bytes("GET", "/clients", [])).body,
            timeout=20, what="the client registered", watch=[proxy, client])
        return proxy, client, proxy_port

    def assert_serves_tls(self, proxy: Process, port: int, ca_cert: str) -> None:
        """The proxy answers ``/-/healthy`` over TLS on ``port`` (verified against
        ``ca_cert``) and has the TLS libraries mapped."""
        context = ssl.create_default_context(cafile=ca_cert)
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        self.addCleanup(connection.close)
        connection.request("GET", "/-/healthy")
        self.assertEqual(connection.getresponse().status, 200, proxy.log_text())
        self.assertNotEqual(objects_mapped(proxy.pid), [])

    def test_no_tls_process_maps_no_tls_library(self) -> None:
        """A plain proxy and client serve a scrape and their metrics without cryptography's
        code mapped, nor OpenSSL's, nor asyncio's."""
        _, exporter_port = start_exporter(self.processes, "plain",
                                          pages={"/metrics": Page(METRICS)})
        proxy, client, proxy_port = self.start_pair(exporter_port)
        answer = scrape_via_proxy(proxy_port, f"http://127.0.0.1:{exporter_port}/metrics")
        self.assertEqual((answer.status, answer.body), (200, METRICS))
        for port in (proxy_port, self.client_metrics_port):  # prometheus-client renders
            page = raw_http(port, http_request_bytes("GET", "/metrics", []))
            self.assertIn(b"pushprox_build_info{", page.body)
        for process in (proxy, client):
            self.assertEqual(objects_mapped(process.pid), [])
            self.assertEqual(objects_mapped(process.pid, OPENSSL_OBJECTS), [])
            self.assertEqual(objects_mapped(process.pid, ASYNCIO_OBJECTS), [])

    def test_tls_listener_loads_tls(self) -> None:
        """With an ssl: endpoint the proxy keeps Twisted's TLS and serves over it."""
        pki = make_pki(str(self.tmp / "pki"))
        port = free_port()
        proxy = self.start("proxy", [
            command("pushprox-proxy"), "--listen",
            f"ssl:{port}:interface=127.0.0.1:privateKey={pki.server.key}"
            f":certKey={pki.server.cert}"], port)
        self.assert_serves_tls(proxy, port, pki.ca.cert_path)

    def test_twistd_without_tls_maps_no_tls_library(self) -> None:
        """Under twistd, a plain proxy and client serve a scrape without cryptography's code
        mapped: our plugin module and the programs' modules were imported without it."""
        # twistd rebuilds a stale plugin cache by importing every plugin (Twisted's own load
        # pyOpenSSL): --help brings the cache up to date first, as a first start would.
        subprocess.run([*twistd_command(), "--help"], capture_output=True,
                       env=subprocess_env(), timeout=120, check=True, cwd=self.tmp)
        _, exporter_port = start_exporter(self.processes, "plain",
                                          pages={"/metrics": Page(METRICS)})
        proxy, client, proxy_port = self.start_pair(exporter_port, twistd=True)
        answer = scrape_via_proxy(proxy_port, f"http://127.0.0.1:{exporter_port}/metrics")
        self.assertEqual((answer.status, answer.body), (200, METRICS))
        self.assertEqual(objects_mapped(proxy.pid), [], proxy.log_text())
        self.assertEqual(objects_mapped(client.pid), [], client.log_text())

    def test_twistd_tls_listener_loads_tls(self) -> None:
        """Under twistd, a pushprox-tls: listener keeps Twisted's TLS and serves over it."""
        pki = make_pki(str(self.tmp / "pki"))
        port = free_port()
        proxy = self.start("proxy", twistd_argv("pushprox-proxy", [
            "--listen", f"pushprox-tls:{port}:interface=127.0.0.1:privateKey={pki.server.key}"
            f":certKey={pki.server.cert}"]), port)
        self.assert_serves_tls(proxy, port, pki.ca.cert_path)

    def test_https_target_loads_tls_on_first_use(self) -> None:
        """A client without TLS options scrapes an https:// target: TLS loads then, not
        before, and verifies the target's certificate against the trust store."""
        pki = make_pki(str(self.tmp / "pki"))
        _, exporter_port = start_exporter(self.processes, "tls",
                                          pages={"/metrics": Page(METRICS)},
                                          tls=(pki.server.cert, pki.server.key))
        # OpenSSL's default trust store, which the client's default policy uses, is the
        # file SSL_CERT_FILE names.
        env = {"SSL_CERT_FILE": pki.ca.cert_path}
        _, client, proxy_port = self.start_pair(exporter_port, client_env=env)
        self.assertEqual(objects_mapped(client.pid), [])
        url = f"http://127.0.0.1:{exporter_port}/metrics?_scheme=https"
        answer = scrape_via_proxy(proxy_port, url)
        self.assertEqual((answer.status, answer.body), (200, METRICS), client.log_text())
        self.assertNotEqual(objects_mapped(client.pid), [])

