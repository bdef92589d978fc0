"""
The images of the ``Containerfile``, built with podman and run with host networking: a
real Prometheus scrapes node_exporter through the proxy container, whose command line is
upstream's flags only (as a manifest for upstream's image would give), and the client
container, configured by environment variables only.

Needs Debian's ``podman`` (and ``runc`` where crun cannot run containers) and, to make the
base image without a registry, ``debootstrap`` and root; ``PUSHPROX_E2E_BASE_IMAGE`` names
another base instead. Without them the tests skip, and fail under
``PUSHPROX_REQUIRE_E2E=1``. The images' sizes are printed (``pytest -s``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import skip_or_fail
from tests.harness import cluster
from tests.harness.containers import Container, Podman, missing_tools
from tests.harness.packaging import code_lines, wheel, wheel_record
from tests.harness.prometheus import proxied_job
from tests.harness.rawhttp import (
    HTTPResponse,
    http_get,
    prometheus_headers,
    raw_http,
    scrape_request,
)
from tests.harness.stack import STARTUP_TIMEOUT, Stack
from tests.harness.waiting import free_port, wait_for

pytestmark = pytest.mark.e2e

PROXY_IMAGE = "localhost/pushprox-test:proxy"
CLIENT_IMAGE = "localhost/pushprox-test:client"


@dataclass(frozen=True)
class Images:
    """The two images, built once for the module."""

    podman: Podman
    base: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Both images of the Containerfile, built on the base image (made if missing)."""
    missing = missing_tools()
    if missing:
        reason = "the container tests need " + "; ".join(missing)
        skip_or_fail(reason)
    podman = Podman(tmp_path_factory.mktemp("podman"))
    base = podman.ensure_base_image()
    podman.build(PROXY_IMAGE, base=base)  # no --target: the proxy is the default
    podman.build(CLIENT_IMAGE, target="client", base=base)
    for image in (base, PROXY_IMAGE, CLIENT_IMAGE):
        print(f"image {image}: {podman.image_size(image) / 1e6:.0f} MB")
    return Images(podman, base)


@pytest.fixture
def containers(images: Images) -> Iterator[list[Container]]:
    """Containers a test starts; removed at its end, pass or fail."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def test_images_run_unprivileged_with_the_commands_as_entry_points(images: Images) -> None:
    """Non-root user, the commands at upstream's /app paths, a healthcheck, no compiler."""
    podman = images.podman
    for image, command, port, flag in ((PROXY_IMAGE, "pushprox-proxy", 8080, "--listen="),
                                       (CLIENT_IMAGE, "pushprox-client", 9369, "--proxy-url=")):
        config = podman.image_config(image)
        assert config["User"] == "65534:65534", config
        assert config["Entrypoint"] == [f"/app/{command}"], config
        assert f"{port}/tcp" in config["ExposedPorts"], config  # type: ignore[operator]
        healthcheck = config["Healthcheck"]
        assert isinstance(healthcheck, dict) and healthcheck["Test"][0] == "CMD", healthcheck
        # The final image: no compiler, no pip, no wheels or pip cache left from the build.
        found = podman.run(
            "run", "--rm", "--network", "none", "--entrypoint", "/opt/pushprox/bin/python",
            image, "-c",
            "import os, shutil; print([n for n in ('gcc', 'cc', 'pip', 'pip3') "
            "if shutil.which(n)], [p for p in ('/wheels', '/root/.cache/pip', "
            "'/opt/pushprox/bin/pip') if os.path.exists(p)], os.getuid())").stdout
        assert found.split("\n")[0] == "[] [] 65534", found
        # The entry point is the command itself: arguments go to it.
        usage = podman.run("run", "--rm", "--network", "none", image, "--help").stdout
        assert flag in usage, usage


def test_prometheus_scrapes_node_exporter_through_both_containers(
    stack: Stack, images: Images, containers: list[Container]
) -> None:
    """
    The proxy with upstream's flags, the client with environment variables only:
    Prometheus sees ``up == 1`` and node_exporter's series; both containers answer their
    healthchecks, and stop with status 0 on SIGTERM, long before podman's SIGKILL.
    """
    podman = images.podman
    node = stack.node_exporter()
    proxy_port, client_metrics_port = free_port(), free_port()
    proxy = podman.container(stack, "proxy-container", PROXY_IMAGE,
                             [f"--web.listen-address=127.0.0.1:{proxy_port}",
                              "--log.level=debug"],
                             env={"PUSHPROX_HEALTHCHECK_URL":
                                  f"http://127.0.0.1:{proxy_port}/-/healthy"})
    containers.append(proxy)
    wait_for(lambda: http_get(f"http://127.0.0.1:{proxy_port}/-/healthy").status == 200,
             timeout=STARTUP_TIMEOUT, what="the proxy container's /-/healthy",
             watch=[proxy.process])

    client = podman.container(stack, "client-container", CLIENT_IMAGE, env={
        "FQDN": "node1.example",
        "PROXY_URL": f"http://127.0.0.1:{proxy_port}",
        "PUSHPROX_TARGET_HOST": "127.0.0.1",
        "PUSHPROX_ALLOW_PORT": str(node.port),
        "PUSHPROX_METRICS_LISTEN": f"tcp:{client_metrics_port}:interface=127.0.0.1",
        "PUSHPROX_RETRY_MAX_WAIT": "2s",
        "PUSHPROX_HEALTHCHECK_URL": f"http://127.0.0.1:{client_metrics_port}/metrics",
    })
    containers.append(client)

    instance = f"node1.example:{node.port}"
    prometheus = stack.prometheus([proxied_job("containers", [instance], proxy_port)])
    prometheus.wait_up("containers", [instance], timeout=60)
    wait_for(lambda: prometheus.query('node_exporter_build_info{job="containers"}'),
             timeout=20, what="node_exporter_build_info through the containers",
             watch=[prometheus.process, proxy.process, client.process])

    for container in (proxy, client):
        check = container.healthcheck()
        assert check.returncode == 0 and check.stdout.strip() in ("", "healthy"), check

    # Logs reach podman's log (the container's output), one line per scrape at debug.
    assert f"url=http://{instance}/metrics" in proxy.process.log_text()
    assert "Polling http://127.0.0.1:" in client.process.log_text()

    prometheus.process.stop()
    for container in (client, proxy):
        status = container.stop(timeout=60)
        assert status == 0, (container.name, status, container.process.log_tail())
    assert "Received SIGTERM" in proxy.process.log_text()



def test_the_images_hold_the_wheel_the_tests_ran_against(images: Images) -> None:
    """pushprox in each image is the tested wheel, file for file (RECORD hashes)."""
    expected = code_lines(wheel_record(wheel()))
    assert any(line.startswith("pushprox/proxy/cluster/") for line in expected), expected
    for image in (PROXY_IMAGE, CLIENT_IMAGE):
        record = images.podman.run(
            "run", "--rm", "--network", "none", "--entrypoint", "/opt/pushprox/bin/python",
            image, "-c",
            "import importlib.metadata as m; print(m.distribution('pushprox')"
            ".read_text('RECORD'), end='')").stdout
        assert code_lines(record) == expected, image


def proxied_scrape(port: int, url: str) -> HTTPResponse:
    """Prometheus' scrape of ``url`` through the proxy on ``port``."""
    request = scrape_request(url, headers=prometheus_headers(10, gzip=False))
    return raw_http(port, request, timeout=15)


def test_cluster_mode_in_containers_answers_through_the_replica_without_the_poll(
    stack: Stack, images: Images, containers: list[Container], tmp_path: Path
) -> None:
    """
    A real redis-server, two replicas from the proxy image and a client from the client
    image polling the first: a scrape through the second is forwarded and answered.
    """
    missing = cluster.missing()
    if missing:
        skip_or_fail("cluster mode in containers needs " + ", ".join(missing))
    podman = images.podman
    _redis, redis_port = cluster.start_redis(stack)
    token = tmp_path / "peer-token"
    token.write_text(cluster.PEER_TOKEN + "\n")
    token.chmod(0o644)  # the images run as nobody
    node = stack.node_exporter()
    ports = [free_port(), free_port()]
    replicas = []
    for index, port in enumerate(ports):
        replica = podman.container(
            stack, f"replica{index}-container", PROXY_IMAGE,
            ["--listen", f"tcp:{port}:interface=127.0.0.1",
             "--redis", f"redis://127.0.0.1:{redis_port}/0",
             "--peer-token-file", "/run/pushprox/peer-token",
             "--peer-url", f"http://127.0.0.1:{port}"],
            env={"PUSHPROX_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/-/healthy"},
            files={token: "/run/pushprox/peer-token"})
        containers.append(replica)
        replicas.append(replica)
    for port, replica in zip(ports, replicas, strict=True):
        def ready(port: int = port) -> bool:
            return http_get(f"http://127.0.0.1:{port}/-/ready").status == 200

        wait_for(ready, timeout=STARTUP_TIMEOUT, what=f"replica on {port} ready",
                 watch=[replica.process])

    holder, other = ports
    client = podman.container(stack, "cluster-client-container", CLIENT_IMAGE, env={
        "FQDN": "node1.example",
        "PROXY_URL": f"http://127.0.0.1:{holder}",
        "PUSHPROX_TARGET_HOST": "127.0.0.1",
        "PUSHPROX_ALLOW_PORT": str(node.port),
        "PUSHPROX_METRICS_LISTEN": "",
        "PUSHPROX_RETRY_MAX_WAIT": "2s",
    })
    containers.append(client)

    url = f"http://node1.example:{node.port}/metrics"
    answer = wait_for(
        lambda: (found if (found := proxied_scrape(other, url)).status == 200 else None),
        timeout=60, what="a scrape through the replica the client does not poll",
        watch=[client.process, *(replica.process for replica in replicas)])
    assert b"node_exporter_build_info" in answer.body
    forwarded = http_get(f"http://127.0.0.1:{other}/metrics").body.decode()
    assert re.search(r'^pushprox_cluster_forwarded_scrapes_total\{code="200"\} [1-9]\d*\.0$',
                     forwarded, re.MULTILINE), forwarded
    for replica in replicas:
        log = replica.process.log_text()
        assert "ModuleNotFoundError" not in log and "plugin cache" not in log, log
