"""
The processes of one test: exporters, a proxy, its clients and Prometheus, each started on
a free port of 127.0.0.1 in a directory of its own, and waited for until it serves.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.exporter import Page, start_exporter
from tests.harness.processes import Daemon, Process, ProcessGroup, twistd_argv
from tests.harness.prometheus import (
    NODE_EXPORTER,
    NODE_EXPORTER_DISABLED,
    PROMETHEUS,
    Prometheus,
    parse_metric,
    prometheus_config,
)
from tests.harness.rawhttp import HTTPResponse, http_get
from tests.harness.waiting import free_port, wait_for
from tests.tlsfixtures import CertificateAuthority, IssuedCertificate

STARTUP_TIMEOUT = 30.0


@dataclass
class Exporter:
    """A running exporter: node_exporter or the test exporter."""

    name: str
    port: int
    process: Process


@dataclass
class Proxy:
    """
    A running ``twistd pushprox-proxy``: plain HTTP, or HTTPS whose certificate the CA
    certificate ``ca_file`` signed; ``headers`` go with every request of the tests (e.g. a
    scraper's password).
    """

    port: int
    process: Process | Daemon
    https: bool = False
    ca_file: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    #: The address it listens on.
    host: str = "127.0.0.1"
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"{'https' if self.https else 'http'}://{self.host}:{self.port}"

    def get(self, path: str, *, headers: Sequence[tuple[str, str]] | None = None
            ) -> HTTPResponse:
        """GET ``path`` of the proxy with its ``headers`` (or these instead)."""
        tls = ssl.create_default_context(cafile=self.ca_file) if self.https else None
        return http_get(self.url + path, tls=tls,
                        headers=self.headers if headers is None else headers)

    def clients(self) -> set[str]:
        """FQDNs listed by /clients."""
        result = self.get("/clients")
        assert result.status == 200, result
        return {target for group in result.json() for target in group["targets"]}

    def metric(self, name: str) -> float:
        """Value of one unlabelled metric of the proxy's /metrics."""
        result = self.get("/metrics")
        assert result.status == 200, result
        values = parse_metric(result.text, name)
        assert len(values) == 1, f"{name} in /metrics: {values}\n{result.text}"
        return values[0]

    def healthy(self) -> bool:
        """Whether /-/healthy answers 200 (an exception while nothing listens)."""
        return self.get("/-/healthy").status == 200

    def wait_ready(self) -> None:
        """Wait until /-/healthy answers; fail at once if the proxy exits."""
        wait_for(self.healthy, timeout=STARTUP_TIMEOUT, what=f"proxy /-/healthy on {self.port}",
                 watch=[self.process])


@dataclass
class Client:
    """A running ``twistd pushprox-client``."""

    fqdn: str
    process: Process | Daemon
    proxy: Proxy


def prlimit() -> str:
    """util-linux's ``prlimit`` (Essential in Debian), which runs a command under limits."""
    found = shutil.which("prlimit")
    if found is None:
        raise AssertionError("prlimit not found: it comes with util-linux")
    return found


class Stack(ProcessGroup):
    """Starts the processes of one test; ``stop_all`` stops them all."""

    # --- targets ---------------------------------------------------------------------------

    def node_exporter(self, name: str = "node_exporter") -> Exporter:
        """node_exporter with the collectors that work in containers."""
        port = free_port()
        argv = [
            str(NODE_EXPORTER),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--collector.textfile.directory={self.directory(f'{name}-textfiles')}",
            *(f"--no-collector.{collector}" for collector in NODE_EXPORTER_DISABLED),
        ]
        process = self.start(name, argv)
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/metrics").status == 200,
                 timeout=STARTUP_TIMEOUT, what=f"{name} on port {port}", watch=[process])
        return Exporter(name, port, process)

    def exporter(
        self,
        name: str,
        *,
        pages: Mapping[str, Page] | None = None,
        delay: float = 0.0,
        tls: IssuedCertificate | None = None,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> Exporter:
        """
        The test exporter serving ``pages``, or without them its metric
        ``e2e_exporter_info{name=NAME,host=...,path=...}`` on /metrics.
        """
        process, port = start_exporter(
            self, name, pages=pages,
            info=pages is None, delay=delay,
            tls=None if tls is None else (tls.cert, tls.key), timeout=STARTUP_TIMEOUT,
            address=address, port=port,
        )
        return Exporter(name, port, process)

    def certificate_authority(self, name: str = "test-ca") -> CertificateAuthority:
        """A new CA writing its files in the directory ``tls``."""
        return CertificateAuthority(str(self.directory("tls")), name)

    def web_config_certificate(self, directory: Path) -> CertificateAuthority:
        """
        A proxy certificate for 127.0.0.1 and localhost from a new CA, as ``server.crt``
        and ``server.key`` in ``directory`` (where a web config file names them); the CA.
        """
        ca = self.certificate_authority()
        issued = ca.issue("proxy", ["127.0.0.1", "localhost"], client=False)
        shutil.copy(issued.cert, directory / "server.crt")
        shutil.copy(issued.key, directory / "server.key")
        return ca

    # --- pushprox ---------------------------------------------------------------------------

    def proxy(
        self,
        *,
        name: str = "proxy",
        extra: Sequence[str] = (),
        daemon: bool = False,
        cwd: Path | None = None,
        certificate: IssuedCertificate | None = None,
        trust: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        nofile: int | None = None,
        interface: str = "127.0.0.1",
    ) -> Proxy:
        """
        Start a proxy on a free port, in the foreground (``twistd -n``) or as a daemon;
        wait until it is healthy.  With ``certificate`` it serves HTTPS, and requests to
        it trust the CA certificate ``trust``.  With ``nofile`` it may open that many file
        descriptors (``ulimit -n``, set by util-linux's ``prlimit``; foreground only).
        """
        for _ in range(3):  # another program may take the free port before the proxy
            port = free_port()
            if certificate is None:
                listen = f"tcp:{port}:interface={interface}"
            else:
                keys = f"privateKey={certificate.key}:certKey={certificate.cert}"
                listen = f"ssl:{port}:{keys}:interface={interface}"
            args = ["--listen", listen, *extra]
            process: Process | Daemon
            if daemon:
                process = self.daemon(name, "pushprox-proxy", args, cwd=cwd)
            else:
                argv = twistd_argv("pushprox-proxy", args)
                if nofile is not None:
                    argv = [prlimit(), f"--nofile={nofile}", "--", *argv]
                process = self.start(name, argv, cwd=cwd)
            proxy = Proxy(port, process, certificate is not None, trust, headers, interface)
            try:
                proxy.wait_ready()
            except AssertionError:
                if process.alive or "Address already in use" not in process.log_text():
                    raise
                self.forget(process)
                continue
            return proxy
        raise AssertionError(f"{name}: no free port in three tries")

    def client_args(
        self, proxy_url: str, fqdn: str, ports: Sequence[int], extra: Sequence[str] = ()
    ) -> list[str]:
        """Options of ``twistd pushprox-client``: a client named ``fqdn``, allowed ``ports``."""
        args = [
            "--proxy-url", proxy_url,
            "--fqdn", fqdn,
            "--target-host", "127.0.0.1",
            "--metrics-listen", "",
            "--retry-initial-wait", "1",
            "--retry-max-wait", "2",
        ]  # fmt: skip
        for port in ports:
            args += ["--allow-port", str(port)]
        return args + list(extra)

    def client(
        self,
        proxy: Proxy,
        fqdn: str,
        ports: Sequence[int],
        *,
        name: str | None = None,
        extra: Sequence[str] = (),
        proxy_url: str | None = None,
        daemon: bool = False,
        cwd: Path | None = None,
        wait: bool = True,
    ) -> Client:
        """
        Start a client of ``proxy`` (at ``proxy_url`` if given), in the foreground or as a
        daemon; with ``wait``, return once the proxy's /clients lists it.
        """
        name = name or f"client-{fqdn}"
        args = self.client_args(proxy_url or proxy.url + "/", fqdn, ports, extra)
        process: Process | Daemon
        if daemon:
            process = self.daemon(name, "pushprox-client", args, cwd=cwd)
        else:
            process = self.start(name, twistd_argv("pushprox-client", args), cwd=cwd)
        client = Client(fqdn, process, proxy)
        if wait:
            wait_for(lambda: fqdn in proxy.clients(), timeout=STARTUP_TIMEOUT,
                     what=f"{fqdn} in the proxy's /clients", watch=[process, proxy.process])
        return client

    # --- Prometheus -------------------------------------------------------------------------

    def prometheus(
        self,
        scrape_configs: Sequence[Mapping[str, Any]],
        *,
        name: str = "prometheus",
        scrape_interval: str = "1s",
        scrape_timeout: str = "1s",
    ) -> Prometheus:
        """Start Prometheus with these scrape jobs; wait until /-/ready."""
        port = free_port()
        directory = self.directory(name)
        config = directory / "prometheus.yml"
        config.write_text(
            prometheus_config(
                scrape_configs, scrape_interval=scrape_interval, scrape_timeout=scrape_timeout
            )
        )
        argv = [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=debug",
        ]
        prometheus = Prometheus(self.start(name, argv), port)
        wait_for(lambda: http_get(f"{prometheus.url}/-/ready").status == 200,
                 timeout=STARTUP_TIMEOUT, what="Prometheus /-/ready",
                 watch=[prometheus.process])
        return prometheus
