"""The processes under test: nginx as the scrape target, pushprox's proxy and client.

nginx serves static pages in text exposition format from a config generated from
``nginx.conf.template``; proxy and client are ``twistd -n`` processes of the installed
pushprox plugins (or of another checkout, through PYTHONPATH in `env`).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import time
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
    procs: Procs, name: str = "proxy", env: dict[str, str] | None = None
) -> tuple[Proc, int]:
    """A pushprox proxy on a free port, and that port, once it listens."""
    port = free_port()
    p = procs.start(
        name,
        [TWISTD, "--pidfile=", "-n", "pushprox-proxy", "--port", f"tcp:{port}:interface=127.0.0.1"],
        nofile=HIGH_NOFILE,
        env=env,
    )
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
