"""
A small exporter for the tests, run as its own process (the standard library only).

It binds 127.0.0.1 on a port of the kernel's choice and writes the number to PORT_FILE
once it listens.  ``--pages`` serves fixed pages (JSON: path → body in base64, headers,
status, chunks); ``--name`` answers ``GET /metrics`` with a metric that names the
exporter and echoes what it was asked (Host header, path) and how often, so that a test
can tell which exporter answered which scrape.  ``--delay`` makes every answer that much
later; ``--tls-cert``/``--tls-key`` serve HTTPS.

    python exporter_program.py PORT_FILE [--pages P.json] [--name N] [--delay S]
                               [--tls-cert C --tls-key K]
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def escape_label(value: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ExporterHandler(BaseHTTPRequestHandler):
    """Serves the pages, and /metrics when the exporter has a name; else 404."""

    server_version = "test-exporter/1"
    protocol_version = "HTTP/1.1"
    pages: dict[str, dict[str, Any]] = {}
    name: str | None = None
    delay = 0.0
    requests = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        page = self.pages.get(self.path)
        if page is None and self.name is not None and self.path.split("?")[0] == "/metrics":
            page = self.info_page()
        if self.delay:
            time.sleep(self.delay)
        if page is None:
            page = {"body": f"no page {self.path}\n".encode(), "status": 404, "chunks": 0,
                    "headers": [("Content-Type", "text/plain")]}
        try:
            self.answer(page)
        except (BrokenPipeError, ConnectionResetError):
            self.log_message("client went away before the answer")

    def info_page(self) -> dict[str, Any]:
        with self.lock:
            type(self).requests += 1
            requests = type(self).requests
        host = self.headers.get("Host", "")
        body = (
            "# HELP e2e_exporter_info Which test exporter answered, and what it was asked.\n"
            "# TYPE e2e_exporter_info gauge\n"
            f'e2e_exporter_info{{name="{escape_label(self.name or "")}",'
            f'host="{escape_label(host)}",path="{escape_label(self.path)}"}} 1\n'
            "# HELP e2e_exporter_requests_total Requests for /metrics served.\n"
            "# TYPE e2e_exporter_requests_total counter\n"
            f"e2e_exporter_requests_total {requests}\n"
        ).encode()
        return {"body": body, "status": 200, "chunks": 0,
                "headers": [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")]}

    def answer(self, page: dict[str, Any]) -> None:
        body: bytes = page["body"]
        self.send_response(page["status"])
        for name, value in page["headers"]:
            self.send_header(name, value)
        if page["chunks"]:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            size = -(-len(body) // page["chunks"])
            for start in range(0, len(body), size):
                piece = body[start:start + size]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.name or 'exporter'}: "
                         f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port_file", help="where to write the port number once listening")
    parser.add_argument("--pages", help="JSON file of the pages to serve")
    parser.add_argument("--name", help="serve /metrics naming this exporter")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: the kernel's choice)")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    pages = {}
    if args.pages:
        for path, page in json.loads(Path(args.pages).read_text()).items():
            pages[path] = {**page, "body": base64.b64decode(page["body"])}
    handler = type("Handler", (ExporterHandler,),
                   {"pages": pages, "name": args.name, "delay": args.delay})
    server = ThreadingHTTPServer((args.address, args.port), handler)
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    temporary = Path(args.port_file + ".tmp")
    temporary.write_text(str(port))
    temporary.rename(args.port_file)
    scheme = "https" if args.tls_cert else "http"
    sys.stderr.write(f"{args.name or 'exporter'}: serving {scheme}://{args.address}:{port}/\n")
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
