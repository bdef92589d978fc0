"""A tiny Prometheus exporter for the end-to-end tests, run as its own process.

It answers ``GET /metrics`` with a metric that names the exporter and echoes what it was
asked (Host header, path), so a test can tell which exporter answered which scrape.
``--delay`` makes it slower than a scrape timeout; ``--tls-cert``/``--tls-key`` serve HTTPS.

    python exporter.py --port 8000 --name alpha [--delay 3] [--tls-cert C --tls-key K]
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def escape_label(value: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ExporterHandler(BaseHTTPRequestHandler):
    """Serves /metrics; everything else is a 404."""

    server_version = "e2e-exporter/1"
    protocol_version = "HTTP/1.1"
    name = "unnamed"
    delay = 0.0
    requests = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self.answer(404, b"not found\n", "text/plain")
            return
        with self.lock:
            type(self).requests += 1
            requests = type(self).requests
        if self.delay:
            time.sleep(self.delay)
        host = self.headers.get("Host", "")
        body = (
            "# HELP e2e_exporter_info Which test exporter answered, and what it was asked.\n"
            "# TYPE e2e_exporter_info gauge\n"
            f'e2e_exporter_info{{name="{escape_label(self.name)}",'
            f'host="{escape_label(host)}",path="{escape_label(self.path)}"}} 1\n'
            "# HELP e2e_exporter_requests_total Requests for /metrics served.\n"
            "# TYPE e2e_exporter_requests_total counter\n"
            f"e2e_exporter_requests_total {requests}\n"
        ).encode()
        self.answer(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def answer(self, code: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.log_message("client went away before the answer")

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.name}: {format % args}\n")
        sys.stderr.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    handler = type("Handler", (ExporterHandler,), {"name": args.name, "delay": args.delay})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if args.tls_cert else "http"
    sys.stderr.write(f"{args.name}: serving {scheme}://127.0.0.1:{args.port}/metrics\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
