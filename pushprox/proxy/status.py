# -*- test-case-name: tests.test_status -*-
"""
The proxy's status: its clients, their polls and scrapes, as an HTML page and as JSON.

``proxy_status`` takes one snapshot from the coordinator and the metrics;
``render_page`` and ``render_json`` turn it into the bodies of ``GET /`` and
``GET /api/v1/clients``.  Pure functions of the snapshot, so that the page can be
tested byte for byte: the resources that serve them live with the others in
``pushprox.proxy.site``.

The page is one self-contained document: inline CSS, no script, no external asset (its
Content-Security-Policy forbids them), every FQDN and label value escaped.  Clients'
labels are theirs to choose, so they are untrusted text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from pushprox.proxy.coordinator import ClientStatus, ICoordinator, ScrapeRecord
from pushprox.shared.metrics import ProxyMetrics

#: Clients listed on the HTML page, failing ones first; the JSON view lists all.
PAGE_ROWS = 1000
#: Sent with the page: nothing but its own inline style may load or run.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ProxyStatus:
    """Everything the status page shows, taken at one moment (``now``)."""

    version: str
    #: When the proxy started, and now (clock seconds).
    started: float
    now: float
    clients: list[ClientStatus]
    scrapes_queued: int
    scrapes_in_flight: int
    #: Scrapes proxied since the start, by outcome (``pushprox_scrapes_total``).
    scrape_outcomes: dict[str, int]

    @property
    def polls_held(self) -> int:
        """Polls held open right now."""
        return sum(client.polls_held for client in self.clients)


def proxy_status(coordinator: ICoordinator, metrics: ProxyMetrics, *,
                 clients: list[ClientStatus], started: float, now: float,
                 version: str) -> ProxyStatus:
    """
    Take a snapshot of the proxy for the status page and the JSON view, around the
    ``clients`` the coordinator listed (``ICoordinator.client_statuses``).
    """
    return ProxyStatus(
        version=version,
        started=started,
        now=now,
        clients=clients,
        scrapes_queued=coordinator.queued_scrape_count(),
        scrapes_in_flight=coordinator.scrapes_in_flight(),
        scrape_outcomes=metrics.scrape_totals(),
    )


def failing(client: ClientStatus) -> bool:
    """Whether the client's last scrape gave Prometheus anything but a 2xx (``up`` 0)."""
    record = client.scrapes
    return record is not None and not 200 <= record.last_status < 300


# -- JSON --


def _scrape_json(record: ScrapeRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "at": record.last_at,
        "status": record.last_status,
        "duration_seconds": record.last_seconds,
        "error": record.last_error,
    }


def client_json(client: ClientStatus) -> dict[str, Any]:
    """One client of the JSON view (the README documents each field)."""
    record = client.scrapes
    return {
        "fqdn": client.fqdn,
        "labels": dict(client.labels),
        "polling": client.polls_held > 0,
        "polls_held": client.polls_held,
        "scrapes_queued": client.scrapes_queued,
        "last_seen": client.last_seen,
        "last_scrape": _scrape_json(record),
        "scrapes": record.scrapes if record is not None else 0,
        "errors": record.errors if record is not None else 0,
        "timeouts": record.timeouts if record is not None else 0,
    }


def render_json(status: ProxyStatus) -> bytes:
    """The body of ``GET /api/v1/clients``."""
    document = {
        "version": status.version,
        "now": status.now,
        "started": status.started,
        "uptime_seconds": status.now - status.started,
        "totals": {
            "clients": len(status.clients),
            "clients_polling": sum(1 for c in status.clients if c.polls_held),
            "clients_failing": sum(1 for c in status.clients if failing(c)),
            "polls_held": status.polls_held,
            "scrapes_queued": status.scrapes_queued,
            "scrapes_in_flight": status.scrapes_in_flight,
            "scrapes": dict(sorted(status.scrape_outcomes.items())),
        },
        "clients": [client_json(client) for client in status.clients],
    }
    return json.dumps(document, indent=1).encode("utf-8") + b"\n"


# -- HTML --

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
 max-width:72rem;padding:1rem;color:#1d1d1f;background:#fff}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
.meta{color:#555;margin:0}
dl{display:flex;flex-wrap:wrap;gap:.5rem;margin:0}
dl div{border:1px solid #ddd;border-radius:6px;padding:.4rem .7rem;min-width:7rem}
dt{font-size:.8rem;color:#555}dd{margin:0;font-size:1.2rem;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.45rem .5rem;border-bottom:1px solid #e5e5e5}
th{font-size:.8rem;color:#555;font-weight:600}
tr.failing td:first-child{border-left:4px solid #c62828}
.fqdn{font-weight:600;overflow-wrap:break-word}
.label{display:inline-block;background:#f1f1f4;border-radius:4px;padding:0 .3rem;
 margin:0 .2rem .2rem 0;font-size:.85rem;overflow-wrap:break-word}
.ok{color:#1b5e20}.bad{color:#c62828;font-weight:600}.muted{color:#777}
time,.ok,.bad{white-space:nowrap}
.error{color:#c62828;font-size:.85rem;overflow-wrap:break-word}
@media (max-width:44rem){
 thead{display:none}table,tbody,tr,td{display:block;width:auto}
 tr{border:1px solid #ddd;border-radius:6px;margin:0 0 .7rem;padding:.2rem 0}
 tr.failing{border-left:4px solid #c62828}tr.failing td:first-child{border-left:0}
 td{border:0;padding:.2rem .6rem}
 td[data-label]::before{content:attr(data-label);display:block;font-size:.75rem;color:#555}
}
"""


def _text(value: object) -> str:
    """``value`` as HTML text, safe in element content and in quoted attributes."""
    return escape(str(value), quote=True)


def utc(seconds: float) -> str:
    """A clock time as ``2024-05-01 12:00:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def span(seconds: float) -> str:
    """A length of time for people: ``850 ms``, ``12 s``, ``5 min``, ``3 h 20 min``, ``2 d 4 h``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _moment(seconds: float, now: float) -> str:
    """A past moment as ``12 s ago``, with its UTC time for machines and on hover."""
    return (f'<time datetime="{_iso(seconds)}" title="{utc(seconds)}">'
            f"{_text(span(now - seconds))} ago</time>")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _labels_cell(labels: dict[str, str]) -> str:
    if not labels:
        return '<span class="muted">none</span>'
    return "".join(f'<span class="label">{_text(name)}={_text(value)}</span>'
                   for name, value in sorted(labels.items()))


def _poll_cell(client: ClientStatus, now: float) -> str:
    if client.polls_held:
        held = f" ({client.polls_held} polls)" if client.polls_held > 1 else ""
        text = f'<span class="ok">polling now</span>{held}'
    else:
        text = '<span class="muted">no poll held</span>'
    text += f"<br>last seen {_moment(client.last_seen, now)}"
    if client.scrapes_queued:
        text += f"<br>{_plural(client.scrapes_queued, 'scrape')} queued"
    return text


def _scrape_cell(record: ScrapeRecord | None, now: float) -> str:
    if record is None:
        return '<span class="muted">not scraped yet</span>'
    good = 200 <= record.last_status < 300
    verdict = "ok" if good else "failing"
    text = (f'<span class="{"ok" if good else "bad"}">{record.last_status} {verdict}</span>'
            f" in {_text(span(record.last_seconds))}<br>{_moment(record.last_at, now)}")
    if record.last_error is not None:
        text += f'<div class="error">{_text(record.last_error)}</div>'
    return text


def _counts_cell(record: ScrapeRecord | None) -> str:
    if record is None:
        return "0"
    text = f"{record.scrapes}"
    if record.errors:
        text += f'<br><span class="bad">{_plural(record.errors, "error")}</span>'
    if record.timeouts:
        text += f" ({_plural(record.timeouts, 'timeout')})"
    return text


def _row(client: ClientStatus, now: float) -> str:
    css = ' class="failing"' if failing(client) else ""
    cells = [
        ("Client", f'<span class="fqdn">{_text(client.fqdn)}</span>'),
        ("Labels", _labels_cell(client.labels)),
        ("Poll", _poll_cell(client, now)),
        ("Last scrape", _scrape_cell(client.scrapes, now)),
        ("Scrapes", _counts_cell(client.scrapes)),
    ]
    return (f"<tr{css}>"
            + "".join(f'<td data-label="{name}">{cell}</td>' for name, cell in cells)
            + "</tr>\n")


def _totals(status: ProxyStatus) -> str:
    failing_count = sum(1 for client in status.clients if failing(client))
    figures = [
        ("clients", len(status.clients)),
        ("polling now", sum(1 for client in status.clients if client.polls_held)),
        ("last scrape failed", failing_count),
        ("polls held", status.polls_held),
        ("scrapes queued", status.scrapes_queued),
        ("scrapes in flight", status.scrapes_in_flight),
    ]
    boxes = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in figures)
    outcomes = " · ".join(f"{_text(outcome)} {count}"
                          for outcome, count in sorted(status.scrape_outcomes.items()))
    return (f"<dl>{boxes}</dl>\n"
            f"<p>Scrapes since the start: {outcomes or 'none'}</p>\n")


def page_order(clients: Iterable[ClientStatus]) -> list[ClientStatus]:
    """Clients whose last scrape failed first, then the rest, each part by FQDN."""
    return sorted(clients, key=lambda client: (not failing(client), client.fqdn))


def render_page(status: ProxyStatus, rows: int = PAGE_ROWS) -> bytes:
    """The body of ``GET /``: a whole HTML document."""
    clients = page_order(status.clients)
    shown = clients[:rows]
    if shown:
        table = ('<table>\n<thead><tr><th>Client</th><th>Labels</th><th>Poll</th>'
                 "<th>Last scrape</th><th>Scrapes</th></tr></thead>\n<tbody>\n"
                 + "".join(_row(client, status.now) for client in shown)
                 + "</tbody>\n</table>\n")
    else:
        table = '<p class="muted">No client is registered.</p>\n'
    if len(shown) < len(clients):
        table += (f"<p>{len(shown)} of {len(clients)} clients shown, failing ones first; "
                  'all of them in <a href="api/v1/clients">/api/v1/clients</a>.</p>\n')
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>pushprox proxy</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<header>\n<h1>pushprox proxy</h1>\n"
        f'<p class="meta">version {_text(status.version)} · up '
        f"{_text(span(status.now - status.started))} (since {utc(status.started)}) · "
        f"{utc(status.now)}</p>\n</header>\n"
        f"<h2>Totals</h2>\n{_totals(status)}"
        f"<h2>Clients</h2>\n{table}"
        '<p class="meta">The same as JSON: <a href="api/v1/clients">/api/v1/clients</a>; '
        'for Prometheus\' http_sd: <a href="clients">/clients</a>.</p>\n'
        "</body>\n</html>\n"
    )
    return document.encode("utf-8")
