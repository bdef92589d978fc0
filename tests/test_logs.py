"""
Tests for the log formats and level filter (pushprox.shared.logs) and the fields our events
carry.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushprox.proxy.channel import LlhttpChannel
from pushprox.shared.logs import (
    event_fields,
    json_line,
    log_format,
    log_level,
    log_observer,
    logfmt_line,
)


def event(**fields: Any) -> dict[str, Any]:
    """A logged event as twisted.logger makes it."""
    return {"log_time": 1700000000.25, "log_level": LogLevel.warn,
            "log_namespace": "pushprox.proxy.site.ScrapeResource", **fields}


class FieldTests(SynchronousTestCase):
    """The stable field names, in their order."""

    def test_scrape_event(self) -> None:
        """time, level, logger, message, then fqdn, url, status, reason, scrape_id."""
        fields = event_fields(event(
            log_format="Scrape of {url} via {fqdn}: {status} {reason}", url="http://n1:9100/m",
            fqdn="n1", status=504, reason="timed out", peer="10.0.0.1", scrape_id="abc"))
        self.assertEqual(list(fields.items()), [
            ("time", "2023-11-14T22:13:20.250Z"), ("level", "warn"),
            ("logger", "pushprox.proxy.site.ScrapeResource"),
            ("message", "Scrape of http://n1:9100/m via n1: 504 timed out"),
            ("fqdn", "n1"), ("url", "http://n1:9100/m"), ("status", 504),
            ("reason", "timed out"), ("scrape_id", "abc")])

    def test_failure_carries_error_and_traceback(self) -> None:
        """A logged failure adds its message and traceback."""
        failure = Failure(ZeroDivisionError("division by zero"))
        fields = event_fields(event(log_format="Poll failed", log_failure=failure,
                                    log_level=LogLevel.critical))
        self.assertEqual((fields["level"], fields["message"], fields["error"]),
                         ("error", "Poll failed", "division by zero"))
        self.assertIn("ZeroDivisionError", fields["traceback"])

    def test_json_line_parses(self) -> None:
        """One line, valid JSON, the same fields."""
        line = json_line(event(log_format="a\nb {fqdn}", fqdn="n\u00e9"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["message"], "a\nb n\u00e9")

    def test_logfmt_quotes_what_needs_it(self) -> None:
        """Values with spaces, quotes, = or newlines are quoted; others are bare."""
        line = logfmt_line(event(log_format='said "hi" {status}', status=200, url="http://x/?a=b"))
        self.assertEqual(line, 'time=2023-11-14T22:13:20.250Z level=warn '
                               'logger=pushprox.proxy.site.ScrapeResource '
                               'message="said \\"hi\\" 200" '
                               'url="http://x/?a=b" status=200\n')

    def test_option_values(self) -> None:
        """Upstream's level and format names; anything else refused."""
        self.assertEqual([log_level(v) for v in ("debug", "INFO", "warn", "warning", "error")],
                         ["debug", "info", "warn", "warn", "error"])
        self.assertEqual([log_format(v) for v in ("logfmt", "JSON", "text")],
                         ["logfmt", "json", "text"])
        for bad in ("trace", ""):
            self.assertRaises(ValueError, log_level, bad)
        self.assertRaises(ValueError, log_format, "xml")


class ObserverTests(SynchronousTestCase):
    """The observer filters by level and writes one line per event."""

    def test_level_filters(self) -> None:
        """At warn, info and debug events are dropped; warn and error written."""
        stream = StringIO()
        log = Logger(namespace="t", observer=log_observer(stream, level="warn", format="json"))
        log.debug("d")
        log.info("i")
        log.warn("w {fqdn}", fqdn="n1")
        log.error("e")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual([(line["level"], line["message"]) for line in lines],
                         [("warn", "w n1"), ("error", "e")])
        self.assertEqual(lines[0]["fqdn"], "n1")


class RoutineEventTests(SynchronousTestCase):
    """Routine events Twisted logs at info are written at debug."""

    def test_idle_connection_timeout_is_debug(self) -> None:
        """"Timing out client" of a real channel, twisted.web's and the proxy's: hidden at
        info, level=debug at debug (this fails if either rewords it)."""
        for make_channel in (HTTPChannel, proxy_channel):
            for level, expected in [("info", []), ("debug", ["debug"])]:
                stream = StringIO()
                observer = log_observer(stream, level=level, format="json")
                globalLogPublisher.addObserver(observer)
                try:
                    channel = make_channel()
                    channel.makeConnection(StringTransport())
                    channel.timeoutConnection()
                    channel.connectionLost(Failure(ConnectionDone()))
                finally:
                    globalLogPublisher.removeObserver(observer)
                lines = [json.loads(line) for line in stream.getvalue().splitlines()]
                timing_out = [line["level"] for line in lines
                              if line["message"].startswith("Timing out client")]
                self.assertEqual(timing_out, expected, make_channel)


def proxy_channel() -> Any:
    """The proxy's HTTP channel, as its site builds it."""
    site = Site(Resource(), timeout=None)
    site.protocol = LlhttpChannel.with_header_limit(16384)  # type: ignore[method-assign,assignment]
    return site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
