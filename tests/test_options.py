"""Tests for the option value parsers: Go durations and listen addresses (pushprox.options)."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushprox.options import (
    OptionValueError,
    go_duration,
    listen_endpoint,
    naming,
    optional_listen_endpoint,
    positive_int,
    seconds,
)


class DurationTests(SynchronousTestCase):
    """Durations in seconds or in Go's syntax, as upstream's flags take them."""

    def test_go_durations(self) -> None:
        """Every unit of time.ParseDuration, combined and fractional."""
        for text, expected in [
            ("5m", 300.0), ("1m30s", 90.0), ("250ms", 0.25), ("15s", 15.0), ("1h", 3600.0),
            ("1.5h", 5400.0), ("2h45m", 9900.0), ("100us", 1e-4), ("100µs", 1e-4),
            ("10ns", 1e-8), ("0", 0.0), (".5s", 0.5), ("-1s", -1.0),
        ]:
            self.assertAlmostEqual(go_duration(text), expected, msg=text)

    def test_malformed_go_durations(self) -> None:
        """A number without a unit, an unknown unit or garbage is refused."""
        for text in ("", "5", "5x", "m", "1m 30s", "1d", "s5", "--1s"):
            self.assertRaises(ValueError, go_duration, text)

    def test_seconds_take_both_forms(self) -> None:
        """Our plain seconds and Go durations; zero, negative or infinite refused."""
        self.assertEqual([seconds(v) for v in ("15", "0.5", "15s", "5m")],
                         [15.0, 0.5, 15.0, 300.0])
        for bad in ("0", "0s", "-1", "-1s", "inf", "nan", "soon"):
            self.assertRaises(ValueError, seconds, bad)

    @given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=59))
    def test_minutes_and_seconds(self, minutes: int, secs: int) -> None:
        """``NmSs`` is always N*60+S seconds."""
        self.assertEqual(go_duration(f"{minutes}m{secs}s"), minutes * 60 + secs)

    @given(st.text(max_size=20))
    def test_garbage_raises_only_value_error(self, text: str) -> None:
        """The parser fails only with ValueError, whatever it is given."""
        with contextlib.suppress(ValueError):
            seconds(text)


class ListenEndpointTests(SynchronousTestCase):
    """Where to listen: Twisted endpoints, port numbers and Go's [HOST]:PORT."""

    def test_forms(self) -> None:
        """Each form becomes the endpoint description it means."""
        for text, expected in [
            ("8080", "tcp:8080"),
            (":8080", "tcp:8080"),
            ("127.0.0.1:9369", "tcp:9369:interface=127.0.0.1"),
            ("0.0.0.0:8080", "tcp:8080:interface=0.0.0.0"),
            ("localhost:8080", "tcp:8080:interface=localhost"),
            ("[::1]:8080", r"tcp6:8080:interface=\:\:1"),
            ("tcp:8080", "tcp:8080"),
            ("tcp6:8080", "tcp6:8080"),
            ("ssl:8443:privateKey=k.pem:certKey=c.pem", "ssl:8443:privateKey=k.pem:certKey=c.pem"),
            ("unix:/run/pushprox.sock", "unix:/run/pushprox.sock"),
            ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"),
        ]:
            self.assertEqual(listen_endpoint(text), expected, msg=text)

    def test_bad_ports(self) -> None:
        """A port out of range is refused in every form."""
        for bad in ("70000", ":0", "127.0.0.1:65536", "[::1]:99999"):
            self.assertRaises(ValueError, listen_endpoint, bad)

    def test_empty_turns_off(self) -> None:
        """Only the optional form takes the empty string, and keeps it."""
        self.assertEqual(optional_listen_endpoint(""), "")
        self.assertEqual(optional_listen_endpoint(":9369"), "tcp:9369")


class NamingTests(SynchronousTestCase):
    """Parser errors name the flag and the value."""

    def test_error_names_the_flag(self) -> None:
        """The ValueError becomes an OptionValueError saying --flag VALUE: why."""
        parse = naming("max-clients", positive_int)
        self.assertEqual(parse("3"), 3)
        error = self.assertRaises(OptionValueError, parse, "0")
        self.assertEqual(str(error), "--max-clients 0: 0 is not a positive integer")
