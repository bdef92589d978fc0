# -*- test-case-name: tests.test_logs -*-
"""
``--log-level`` and ``--log-format``: which events are written, and as what.

``logfmt`` and ``json`` write one line per event with the same stable field names, so
that a cluster's log pipeline can parse them: ``time`` (UTC, RFC 3339 with
milliseconds), ``level`` (``debug``, ``info``, ``warn``, ``error``), ``logger`` (the
module and class that logged), ``message`` (the rendered text), then those of
``EVENT_FIELDS`` the event carries, and ``error``/``traceback`` for a logged failure.
``text`` is Twisted's classic format, twistd's own.

A few routine events that Twisted logs at info (an idle HTTP connection timed out, every
minute on a busy proxy) are written at debug (``ROUTINE_FORMATS``).
"""

from __future__ import annotations

import datetime
import json
import signal
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

#: The event fields written beside the message, in this order, when an event has them.
EVENT_FIELDS = ("fqdn", "url", "status", "reason", "scrape_id")

#: ``--log-level`` values, least to most severe, and the Twisted level each stands for.
LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_LEVEL_NAMES = {LogLevel.critical: "error"} | {level: name for name, level in LEVELS.items()}

EventDict = Mapping[str, Any]

#: Twisted's messages (``log_format``) of routine events that it logs at info.
ROUTINE_FORMATS = frozenset({
    "Timing out client: {peer}",  # twisted.web.http.HTTPChannel
    "Timing out client {client}",  # twisted.web._http2.H2Connection
})


def log_level(value: str) -> str:
    """Parse a ``--log-level`` value."""
    name = value.strip().lower()
    if name == "warning":
        name = "warn"
    if name not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}")
    return name


def event_fields(event: EventDict) -> dict[str, Any]:
    """The fields written for one event, in their order (see the module docstring)."""
    stamp = datetime.datetime.fromtimestamp(event.get("log_time", 0.0), datetime.timezone.utc)
    fields: dict[str, Any] = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "info"),
        "logger": event.get("log_namespace", ""),
        "message": formatEvent(dict(event)),
    }
    for name in EVENT_FIELDS:
        if name in event:
            fields[name] = _plain(event[name])
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        fields["error"] = failure.getErrorMessage()
        fields["traceback"] = failure.getTraceback()
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def json_line(event: EventDict) -> str:
    """One JSON object on one line."""
    return json.dumps(event_fields(event), ensure_ascii=False, separators=(",", ":")) + "\n"


def logfmt_line(event: EventDict) -> str:
    """``key=value`` pairs on one line; values with spaces, quotes or ``=`` are quoted."""
    pairs = []
    for key, value in event_fields(event).items():
        text = "" if value is None else str(value)
        if not text or any(c in text for c in ' ="\\') or not text.isprintable():
            text = json.dumps(text, ensure_ascii=False)
        pairs.append(f"{key}={text}")
    return " ".join(pairs) + "\n"


def text_line(event: EventDict) -> str | None:
    """Twisted's classic text (what twistd writes by default)."""
    return formatEventAsClassicLogText(dict(event))


#: ``--log-format`` values.
FORMATS: dict[str, Callable[[EventDict], str | None]] = {
    "logfmt": logfmt_line,
    "json": json_line,
    "text": text_line,
}


def log_format(value: str) -> str:
    """Parse a ``--log-format`` value."""
    name = value.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"expected one of {', '.join(FORMATS)}")
    return name


def log_observer(stream: IO[str], *, level: str, format: str) -> ILogObserver:
    """An observer writing events of ``level`` and above to ``stream`` in ``format``."""
    return RoutineAtDebug(FilteringLogObserver(
        FileLogObserver(stream, FORMATS[format]),
        [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])],
    ))


@implementer(ILogObserver)
class RoutineAtDebug:
    """Passes events on to ``observer``, those of ``ROUTINE_FORMATS`` at debug."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        """Pass ``event`` on, at debug if it is routine."""
        if event.get("log_format") in ROUTINE_FORMATS and event.get("log_level") == LogLevel.info:
            event = {**event, "log_level": LogLevel.debug}
        self._observer(event)


def twistd_log_file(twistd_options: Mapping[str, Any]) -> IO[str]:
    """
    Where twistd would log, by its own rules: ``--logfile`` (``-`` is standard output),
    standard output with ``-n``, else ``twistd.log``; rotated on SIGUSR1 as twistd does.
    """
    name = twistd_options.get("logfile") or ""
    foreground = bool(twistd_options.get("nodaemon"))
    if name == "-" or (not name and foreground):
        if not foreground:
            raise ValueError("a daemon cannot log to standard output")
        return sys.stdout
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(*_: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    stream: IO[str] = log_file
    return stream
