"""The processes under test: nginx as the scrape target, pushprox's proxy and client.

nginx serves static pages in text exposition format from a config generated from
``nginx.conf.template``; proxy and client are ``twistd -n`` processes of the installed
pushprox plugins (or of another checkout, through PYTHONPATH in `env`).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from processes import (
    BENCH,
    ENV,
    VENV_BIN,
    BenchError,
    Proc,
    Procs,
    free_port,
    http_get,
    tool_path,
    wait_port,
)

TWISTD = str(VENV_BIN / "twistd")
NGINX_TEMPLATE = BENCH / "nginx.conf.template"
NGINX_FALLBACK = "/usr/sbin/nginx"

# Page name -> size in bytes.  "10m" is 10 MB (decimal): a whole serialized push of
# it (status line + headers + body) stays under a 10 MiB push-size limit.
PAGES = {"1k": 1024, "57k": 57 * 1024, "10m": 10 * 1000 * 1000}
FQDN = "bench.example"
BASELINE_FQDN = "baseline.example"
HIGH_NOFILE = 65536

# --------------------------------------------------------------------------- target


def exposition_page(size: int) -> bytes:
    """Text exposition format, exactly `size` bytes."""
    out: list[str] = []
    n = 0
    i = 0
    while n < size:
        name = f"bench_series_{i // 10}"
        if i % 10 == 0:
            chunk = (
                f"# HELP {name} Synthetic series for the pushprox benchmark.\n# TYPE {name} gauge\n"
            )
            out.append(chunk)
            n += len(chunk)
        chunk = f'{name}{{instance="node-{i % 97}",job="bench",shard="{i % 10}"}} {i * 1.25:.2f}\n'
        out.append(chunk)
        n += len(chunk)
        i += 1
    text = "".join(out).encode()[:size]
    text = text[: text.rfind(b"\n") + 1]
    rest = size - len(text)
    if rest == 1:
        text += b"\n"
    elif rest >= 2:
        text += b"#" + b" " * (rest - 2) + b"\n"
    assert len(text) == size
    return text


def start_nginx(procs: Procs, tmp: Path) -> tuple[Proc, int]:
    """nginx serving PAGES under `tmp`/nginx, and its port, once it has served /1k."""
    nginx = tool_path("nginx", NGINX_FALLBACK)
    prefix = tmp / "nginx"
    root = prefix / "html"
    root.mkdir(parents=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True)
    for name, size in PAGES.items():
        (root / name).write_bytes(exposition_page(size))
    port = free_port()
    conf = (
        NGINX_TEMPLATE.read_text()
        .replace("@PREFIX@", str(prefix))
        .replace("@ROOT@", str(root))
        .replace("@PORT@", str(port))
    )
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    p = procs.start("nginx", [nginx, "-c", str(conf_path), "-p", str(prefix)], nofile=16384)
    wait_port(port, p)
    status, body = http_get(port, "/1k")
    if status != 200 or len(body) != PAGES["1k"]:
        raise BenchError(f"nginx answered {status} with {len(body)} bytes for /1k")
    return p, port


# --------------------------------------------------------------------------- pushprox


def plugin_error(plugin: str) -> str | None:
    """None when `twistd PLUGIN --help` works, else why not."""
    if not os.path.exists(TWISTD):
        return f"{TWISTD} does not exist"
    try:
        r = subprocess.run(
            [TWISTD, plugin, "--help"],
            cwd=tempfile.gettempdir(),
            env=ENV,
            capture_output=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return f"`twistd {plugin} --help` did not finish in 120 s"
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-3:]
        return f"`twistd {plugin} --help` exited {r.returncode}: " + " / ".join(
            t.strip() for t in tail
        )
    return None


def start_proxy(
    procs: Procs,
    name: str = "proxy",
    env: dict[str, str] | None = None,
    port: int | None = None,
    args: Sequence[str] = (),
) -> tuple[Proc, int]:
    """A pushprox proxy on `port` (a free one if None) with `args`, and its port, once it
    listens."""
    port = port or free_port()
    p = procs.start(
        name,
        [TWISTD, "--pidfile=", "-n", "pushprox-proxy", "--port", f"tcp:{port}:interface=127.0.0.1",
         *args],
        nofile=HIGH_NOFILE,
        env=env,
    )  # fmt: skip
    wait_port(port, p, timeout=60)
    return p, port


def start_client(
    procs: Procs, proxy_port: int, nginx_port: int, fqdn: str, env: dict[str, str] | None = None
) -> Proc:
    """A pushprox client polling as `fqdn`, allowed to fetch PAGES from nginx."""
    argv = [
        TWISTD, "--pidfile=", "-n", "pushprox-client",
        "--proxy-url", f"http://127.0.0.1:{proxy_port}/",
        "--fqdn", fqdn,
        "--target-host", "127.0.0.1",
        "--metrics-listen", "",
        "--allow-port", str(nginx_port),
    ]  # fmt: skip
    for page in PAGES:
        argv += ["--allow-path", f"/{page}"]
    return procs.start(f"client-{fqdn}", argv, nofile=HIGH_NOFILE, env=env)


def scrape_uri(fqdn: str, nginx_port: int, page: str) -> str:
    """The absolute URI that Prometheus sends to the proxy for `page` of client `fqdn`."""
    return f"http://{fqdn}:{nginx_port}/{page}"


def wait_scrape_ok(
    proxy: Proc, proxy_port: int, client: Proc, fqdn: str, nginx_port: int, timeout: float = 60.0
) -> None:
    """Until a proxied scrape of /1k returns the page (the client has polled)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        proxy.check()
        client.check()
        try:
            status, body = http_get(
                proxy_port, scrape_uri(fqdn, nginx_port, "1k"), f"{fqdn}:{nginx_port}", 5.0
            )
            if status == 200 and body == exposition_page(PAGES["1k"]):
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise BenchError(
        f"no successful proxied scrape of {fqdn} within {timeout}s; last answer: {last}\n"
        f"proxy log tail:\n{proxy.log_tail()}\nclient log tail:\n{client.log_tail()}"
    )


def registered_clients(proxy_port: int) -> list[str] | None:
    """FQDNs listed by GET /clients, or None when that does not work."""
    try:
        status, body = http_get(proxy_port, "/clients", timeout=30.0)
        if status != 200:
            return None
        groups = json.loads(body)
        return [t for g in groups for t in g.get("targets", [])]
    except (OSError, http.client.HTTPException, ValueError, AttributeError, TypeError):
        return None


def wait_registered(proxy_port: int, fqdn: str, client: Proc, timeout: float = 30.0) -> bool:
    """Whether the proxy lists `fqdn` within `timeout` s; False at once if /clients fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.check()
        names = registered_clients(proxy_port)
        if names is None:
            return False
        if any(n.split(":")[0] == fqdn for n in names):
            return True
        time.sleep(0.1)
    return False


def wait_listed(proxy_port: int, prefix: str, count: int, timeout: float = 60.0) -> int | None:
    """How many clients named `prefix`... the proxy lists, once `count` or after `timeout` s.

    None when GET /clients does not work from the start."""
    t0 = time.monotonic()
    listed = None
    while time.monotonic() - t0 < timeout:
        names = registered_clients(proxy_port)
        if names is None:
            break
        listed = sum(1 for x in names if x.startswith(prefix))
        if listed >= count:
            break
        time.sleep(0.5)
    return listed


# --------------------------------------------------------------------------- cluster

REDIS_FALLBACK = "/usr/bin/redis-server"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
LB_TEMPLATE = BENCH / "nginx-lb.conf.template"
LB_CLIENTS = 4  # clients of the cluster section polling through nginx, scraped in turn
CLUSTER_HINT = "apt-get install -y --no-install-recommends redis-server libnginx-mod-stream"


def cluster_tools_error() -> str | None:
    """None when redis-server and nginx's stream module are here, else what is missing."""
    missing = []
    if not os.path.exists(shutil.which("redis-server") or REDIS_FALLBACK):
        missing.append("redis-server")
    if not STREAM_MODULE.exists():
        missing.append(str(STREAM_MODULE))
    if missing:
        return f"{' and '.join(missing)} not found: {CLUSTER_HINT}"
    return None


def start_redis(procs: Procs) -> tuple[Proc, int]:
    """Debian's redis-server on a free port, nothing saved, its files in the temp dir."""
    port = free_port()
    data = procs.tmp / "redis-data"
    data.mkdir()
    argv = [
        shutil.which("redis-server") or REDIS_FALLBACK,
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(data),
    ]  # fmt: skip
    p = procs.start("redis", argv)
    wait_port(port, p)
    return p, port


def peer_token_file(tmp: Path) -> Path:
    """A file holding a fresh peer token, readable by its owner only."""
    path = tmp / "peer-token"
    path.write_text(secrets.token_hex(16) + "\n")
    path.chmod(0o600)
    return path


def start_replica(procs: Procs, name: str, redis_port: int, token: Path) -> tuple[Proc, int]:
    """A proxy in cluster mode on a free port, its peer URL on 127.0.0.1."""
    port = free_port()
    args = [
        "--redis", f"redis://127.0.0.1:{redis_port}/0",
        "--peer-url", f"http://127.0.0.1:{port}",
        "--peer-token-file", str(token),
    ]  # fmt: skip
    return start_proxy(procs, name, port=port, args=args)


def start_balancer(procs: Procs, one: int, two: tuple[int, int]) -> tuple[Proc, int, int]:
    """nginx's stream module: one port in front of replica `one` alone, one in front of both
    replicas of `two` (round robin); the nginx process and the two ports."""
    prefix = procs.tmp / "nginx-lb"
    prefix.mkdir()
    port_one, port_two = free_port(), free_port()
    conf = (
        LB_TEMPLATE.read_text()
        .replace("@MODULE@", str(STREAM_MODULE))
        .replace("@PREFIX@", str(prefix))
        .replace("@PORT_ONE@", str(port_one))
        .replace("@PORT_TWO@", str(port_two))
        .replace("@ONE@", str(one))
        .replace("@TWO_A@", str(two[0]))
        .replace("@TWO_B@", str(two[1]))
    )
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    nginx = tool_path("nginx", NGINX_FALLBACK)
    p = procs.start("nginx-lb", [nginx, "-c", str(conf_path), "-p", str(prefix)], nofile=16384)
    wait_port(port_one, p)
    wait_port(port_two, p)
    return p, port_one, port_two
