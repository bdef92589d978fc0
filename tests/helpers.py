"""
The parts of ``tests.harness`` the unit tests use, under the names they import.

Defined in ``tests.harness.rawhttp`` (HTTP as bytes, read with ``pushprox.shared.wire``),
``tests.harness.waiting`` (ports, deadlines) and ``tests.harness.exporter``.
"""

from __future__ import annotations

from tests.harness.exporter import Page, start_exporter
from tests.harness.rawhttp import (
    HTTPResponse,
    IncompleteMessage,
    RawConnection,
    http_request_bytes,
    parse_response,
    parse_responses,
    prometheus_headers,
    raw_http,
    raw_http_request,
    response_so_far,
    scrape_via_proxy,
    track_connections,
)
from tests.harness.waiting import LOCALHOST, free_port, port_open, wait_for

__all__ = [
    "LOCALHOST",
    "HTTPResponse",
    "IncompleteMessage",
    "Page",
    "RawConnection",
    "free_port",
    "http_request_bytes",
    "parse_response",
    "parse_responses",
    "port_open",
    "prometheus_headers",
    "raw_http",
    "raw_http_request",
    "response_so_far",
    "scrape_via_proxy",
    "start_exporter",
    "track_connections",
    "wait_for",
]
