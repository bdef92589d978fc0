"""
Tests for L{pushprox.proxy.status} and its endpoints: the status page C{/} and C{/api/v1/clients}.

The site is driven as in L{tests.test_proxy}: in-memory connections on a L{Clock}, so every
time, duration and count on the page is exact.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pushprox.proxy import status
from pushprox.proxy.cluster.coordinator import ClusterCoordinator
from pushprox.proxy.coordinator import ClientStatus, Coordinator, ScrapeRecord
from pushprox.proxy.site import PushProxSite
from pushprox.shared import wire
from pushprox.shared.auth import PasswordChecker, ScraperAuth, parse_networks
from tests.harness.credentials import fast_hash
from tests.test_proxy import ProxyTestCase, Response, post

#: The proxy starts at this clock time (2023-11-14 22:13:20 UTC).
T0 = 1_700_000_000.0
SCRAPER = "prometheus"
PASSWORD = "status-page-password-5d1f"
HOSTILE_LABELS = {
    "site": "<script>alert(1)</script>",
    "owner": '"><img src=x onerror=alert(2)> & co',
}
NOT_FOUND = (b"not found: this is a PushProx proxy (use it as proxy_url; endpoints / /poll "
             b"/push /clients /api/v1/clients /metrics /-/healthy /-/ready)\n")


def basic(user: str, password: str) -> bytes:
    """An Authorization value for basic authentication."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class ParsedPage(HTMLParser):
    """The elements, attribute names and label texts of an HTML page, as a parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[str] = []
        self.label_texts: list[str] = []
        self._in_label = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Note the element and its attributes."""
        self.tags.add(tag)
        self.attributes.extend(name for name, _ in attrs)
        self._in_label = ("class", "label") in attrs
        if self._in_label:
            self.label_texts.append("")

    def handle_endtag(self, tag: str) -> None:
        """A label ends with its span."""
        self._in_label = False

    def handle_data(self, data: str) -> None:
        """Collect the text of labels."""
        if self._in_label:
            self.label_texts[-1] += data


class StatusTestCase(ProxyTestCase):
    """A site started at T0, with helpers to read its status."""

    def setUp(self) -> None:
        super().setUp()
        self.clock.advance(T0)
        self.site = self.make_site()

    def make_site(self, **options: Any) -> PushProxSite:
        """A site on the test's clock and coordinator with these options."""
        return PushProxSite(self.coordinator, clock=self.clock, config=self.config,
                            reactor=Clock(), **options)

    def get(self, path: bytes, extra: bytes = b"") -> Response:
        """GET a path."""
        connection = self.connect()
        connection.send(b"GET " + path + b" HTTP/1.1\r\nHost: proxy\r\n" + extra + b"\r\n")
        response = connection.response()
        assert response is not None
        return response

    def fleet(self) -> None:
        """
        Three clients at T0 + 14: node1 polling, its scrape a success; node2 (hostile
        labels) not polling, its target refused; node3 timed out, with a scrape queued.
        """
        self.clock.advance(10)
        poll = self.poll(b"node1.example")
        self.scrape(b"http://node1.example:9100/metrics")
        request = self.handed_out(poll)
        self.clock.advance(0.25)
        self.push(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=2) + b"ok")
        self.poll(b"node1.example")

        labels = wire.encode_labels(sorted(HOSTILE_LABELS.items()))
        poll = self.poll(b"node2.example", b"X-PushProx-Labels: " + labels + b"\r\n")
        self.scrape(b"http://node2.example:9100/metrics")
        request = self.handed_out(poll)
        self.clock.advance(0.5)
        self.push(wire.encode_error_response(scrape_id=request.scrape_id,
                                             reason="connection refused"))

        self.poll(b"node3.example").hang_up()
        self.scrape(b"http://node3.example:9100/metrics", timeout=b"3")
        self.clock.advance(2.75)
        self.scrape(b"http://node3.example:9100/metrics", timeout=b"30")
        self.clock.advance(0.5)


class JSONViewTests(StatusTestCase):
    """``GET /api/v1/clients``."""

    def test_lists_clients_polls_last_scrapes_and_totals(self) -> None:
        """Every figure of the view, exactly, for a healthy and two failing clients."""
        self.fleet()
        response = self.get(b"/api/v1/clients")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers[b"content-type"], b"application/json")
        self.assertEqual(json.loads(response.body), {
            "version": version("pushprox"),
            "now": T0 + 14,
            "started": T0,
            "uptime_seconds": 14.0,
            "totals": {
                "clients": 3, "clients_polling": 1, "clients_failing": 2, "polls_held": 1,
                "scrapes_queued": 1, "scrapes_in_flight": 1,
                "scrapes": {"client_error": 1, "success": 1, "timeout": 1},
            },
            "clients": [
                {
                    "fqdn": "node1.example", "labels": {}, "polling": True,
                    "polls_held": 1, "scrapes_queued": 0, "last_seen": T0 + 10.25,
                    "last_scrape": {"at": T0 + 10.25, "status": 200,
                                    "duration_seconds": 0.25, "error": None},
                    "scrapes": 1, "errors": 0, "timeouts": 0,
                },
                {
                    "fqdn": "node2.example", "labels": HOSTILE_LABELS, "polling": False,
                    "polls_held": 0, "scrapes_queued": 0, "last_seen": T0 + 10.25,
                    "last_scrape": {
                        "at": T0 + 10.75, "status": 502, "duration_seconds": 0.5,
                        "error": "the client could not scrape the target: connection refused",
                    },
                    "scrapes": 1, "errors": 1, "timeouts": 0,
                },
                {
                    "fqdn": "node3.example", "labels": {}, "polling": False,
                    "polls_held": 0, "scrapes_queued": 1, "last_seen": T0 + 10.75,
                    "last_scrape": {
                        "at": T0 + 13.5, "status": 504, "duration_seconds": 2.75,
                        "error": "client node3.example did not answer within the scrape "
                                 "timeout (no poll arrived)",
                    },
                    "scrapes": 1, "errors": 1, "timeouts": 1,
                },
            ],
        })

    def test_scraper_hanging_up_counts_as_an_error(self) -> None:
        """A scrape Prometheus gave up on is the client's last, as 499 with the reason."""
        self.poll(b"node1.example").hang_up()
        self.clock.advance(1)
        self.scrape(b"http://node1.example:9100/metrics").hang_up()
        [client] = json.loads(self.get(b"/api/v1/clients").body)["clients"]
        self.assertEqual(client["last_scrape"], {
            "at": T0 + 1, "status": 499, "duration_seconds": 0.0,
            "error": "the scraper hung up before the answer",
        })
        self.assertEqual((client["scrapes"], client["errors"]), (1, 1))
        self.assertIdle()

    def test_no_clients(self) -> None:
        """A fresh proxy: no client, every total zero."""
        document = json.loads(self.get(b"/api/v1/clients").body)
        self.assertEqual(document["clients"], [])
        self.assertEqual(document["totals"], {
            "clients": 0, "clients_polling": 0, "clients_failing": 0, "polls_held": 0,
            "scrapes_queued": 0, "scrapes_in_flight": 0, "scrapes": {},
        })


class PageTests(StatusTestCase):
    """``GET /``."""

    def page(self) -> str:
        """The status page's body, after checking how it is served."""
        response = self.get(b"/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers[b"content-type"], b"text/html; charset=utf-8")
        self.assertEqual(response.headers[b"content-security-policy"],
                         status.CONTENT_SECURITY_POLICY)
        self.assertEqual(response.headers[b"x-content-type-options"], b"nosniff")
        return response.body.decode("utf-8")

    def test_rows_failing_first_with_exact_figures(self) -> None:
        """Each client's row says its poll and last scrape; failing clients come first."""
        self.fleet()
        body = self.page()
        rows = body.split("<tbody>\n", 1)[1].split("</tbody>", 1)[0].splitlines()
        self.assertEqual(rows, [
            '<tr class="failing">'
            '<td data-label="Client"><span class="fqdn">node2.example</span></td>'
            '<td data-label="Labels"><span class="label">owner=&quot;&gt;&lt;img src=x '
            'onerror=alert(2)&gt; &amp; co</span><span class="label">site=&lt;script&gt;'
            'alert(1)&lt;/script&gt;</span></td>'
            '<td data-label="Poll"><span class="muted">no poll held</span><br>last seen '
            '<time datetime="2023-11-14T22:13:30Z" title="2023-11-14 22:13:30 UTC">'
            "3.8 s ago</time></td>"
            '<td data-label="Last scrape"><span class="bad">502 failing</span> in 500 ms<br>'
            '<time datetime="2023-11-14T22:13:30Z" title="2023-11-14 22:13:30 UTC">'
            '3.2 s ago</time><div class="error">the client could not scrape the target: '
            "connection refused</div></td>"
            '<td data-label="Scrapes">1<br><span class="bad">1 error</span></td>'
            "</tr>",
            '<tr class="failing">'
            '<td data-label="Client"><span class="fqdn">node3.example</span></td>'
            '<td data-label="Labels"><span class="muted">none</span></td>'
            '<td data-label="Poll"><span class="muted">no poll held</span><br>last seen '
            '<time datetime="2023-11-14T22:13:30Z" title="2023-11-14 22:13:30 UTC">'
            "3.2 s ago</time><br>1 scrape queued</td>"
            '<td data-label="Last scrape"><span class="bad">504 failing</span> in 2.8 s<br>'
            '<time datetime="2023-11-14T22:13:33Z" title="2023-11-14 22:13:33 UTC">'
            '500 ms ago</time><div class="error">client node3.example did not answer '
            "within the scrape timeout (no poll arrived)</div></td>"
            '<td data-label="Scrapes">1<br><span class="bad">1 error</span> (1 timeout)</td>'
            "</tr>",
            "<tr>"
            '<td data-label="Client"><span class="fqdn">node1.example</span></td>'
            '<td data-label="Labels"><span class="muted">none</span></td>'
            '<td data-label="Poll"><span class="ok">polling now</span><br>last seen '
            '<time datetime="2023-11-14T22:13:30Z" title="2023-11-14 22:13:30 UTC">'
            "3.8 s ago</time></td>"
            '<td data-label="Last scrape"><span class="ok">200 ok</span> in 250 ms<br>'
            '<time datetime="2023-11-14T22:13:30Z" title="2023-11-14 22:13:30 UTC">'
            "3.8 s ago</time></td>"
            '<td data-label="Scrapes">1</td>'
            "</tr>",
        ])
        self.assertIn(
            "<dl><div><dt>clients</dt><dd>3</dd></div><div><dt>polling now</dt><dd>1</dd>"
            "</div><div><dt>last scrape failed</dt><dd>2</dd></div><div><dt>polls held</dt>"
            "<dd>1</dd></div><div><dt>scrapes queued</dt><dd>1</dd></div><div><dt>scrapes "
            "in flight</dt><dd>1</dd></div></dl>\n"
            "<p>Scrapes since the start: client_error 1 · success 1 · timeout 1</p>", body)
        self.assertIn(f'<p class="meta">version {version("pushprox")} · up 14 s (since '
                      "2023-11-14 22:13:20 UTC) · 2023-11-14 22:13:34 UTC</p>", body)

    def test_hostile_labels_never_become_markup(self) -> None:
        """A client's label values are text: parsed, the page has only our own elements."""
        self.fleet()
        parsed = ParsedPage(self.page())
        self.assertEqual(parsed.tags, {
            "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "dl",
            "div", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "span", "br",
            "time", "a",
        })
        self.assertEqual([name for name in parsed.attributes if name.startswith("on")], [])
        self.assertIn(f"site={HOSTILE_LABELS['site']}", parsed.label_texts)
        self.assertIn(f"owner={HOSTILE_LABELS['owner']}", parsed.label_texts)

    def test_hostile_fqdn_refused_at_poll(self) -> None:
        """An FQDN with markup is a 400 at its poll, so it never reaches the page."""
        connection = self.connect()
        connection.send(post(b"/poll", b"<script>alert(1)</script>.example"))
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertEqual(self.coordinator.clients(), [])
        self.assertIn("No client is registered.", self.page())

    def test_render_escapes_fqdn_from_any_coordinator(self) -> None:
        """Whatever a coordinator returns as an FQDN or error, the page escapes it."""
        hostile = ClientStatus(
            fqdn='<b onclick="x">node</b>', labels={"a": "'"}, last_seen=T0, polls_held=0,
            scrapes_queued=0,
            scrapes=ScrapeRecord(last_at=T0, last_status=502, last_seconds=0.1,
                                 last_error="<i>refused</i>", scrapes=1, errors=1),
        )
        snapshot = status.ProxyStatus(version="<v>", started=T0, now=T0 + 1,
                                      clients=[hostile], scrapes_queued=0,
                                      scrapes_in_flight=0, scrape_outcomes={"<o>": 1})
        body = status.render_page(snapshot).decode()
        self.assertIn('<span class="fqdn">&lt;b onclick=&quot;x&quot;&gt;node&lt;/b&gt;'
                      "</span>", body)
        self.assertIn('<span class="label">a=&#x27;</span>', body)
        self.assertIn('<div class="error">&lt;i&gt;refused&lt;/i&gt;</div>', body)
        self.assertIn("version &lt;v&gt;", body)
        self.assertIn("&lt;o&gt; 1", body)
        for raw in ("<b ", "<i>", "<v>", "<o>"):
            self.assertNotIn(raw, body)

    def test_page_rows_are_capped_failing_first(self) -> None:
        """Past the row limit the page lists failing clients first and points to the JSON."""
        clients = [
            ClientStatus(fqdn=f"node{i}.example", labels={}, last_seen=T0, polls_held=1,
                         scrapes_queued=0,
                         scrapes=ScrapeRecord(last_status=200 if i != 3 else 504))
            for i in range(5)
        ]
        snapshot = status.ProxyStatus(version="1", started=T0, now=T0, clients=clients,
                                      scrapes_queued=0, scrapes_in_flight=0,
                                      scrape_outcomes={})
        body = status.render_page(snapshot, rows=2).decode()
        self.assertEqual(body.count("<tr"), 3)  # the head row and two clients
        self.assertLess(body.index("node3.example"), body.index("node0.example"))
        self.assertNotIn("node1.example", body)
        self.assertIn('<p>2 of 5 clients shown, failing ones first; all of them in '
                      '<a href="api/v1/clients">/api/v1/clients</a>.</p>', body)


class SpanTests(StatusTestCase):
    """How lengths of time read on the page."""

    def test_spans(self) -> None:
        """From milliseconds to days, rounded down past ten seconds."""
        self.assertEqual(
            [status.span(s) for s in (-1, 0.0123, 0.25, 2.75, 59.9, 61, 3 * 3600 + 1250,
                                      2 * 86400 + 4 * 3600 + 59)],
            ["0 ms", "12 ms", "250 ms", "2.8 s", "59 s", "1 min", "3 h 20 min", "2 d 4 h"],
        )


class AccessTests(StatusTestCase):
    """The page and the JSON view are guarded and switched like ``/clients``."""

    PATHS = (b"/", b"/api/v1/clients")

    def test_password_wanted(self) -> None:
        """With --scrape-auth: 401 and a challenge without the password or a wrong one."""
        checker = PasswordChecker({SCRAPER: fast_hash(PASSWORD.encode())})
        self.site = self.make_site(scraper_auth=ScraperAuth(passwords=checker))
        self.poll(b"node1.example")
        for path in self.PATHS:
            refused = self.get(path)
            self.assertEqual((refused.status, refused.body), (401, b"credentials required\n"))
            self.assertEqual(refused.headers[b"www-authenticate"], b'Basic realm="pushprox"')
            wrong = self.get(path, b"Authorization: " + basic(SCRAPER, "wrong") + b"\r\n")
            self.assertEqual((wrong.status, wrong.body), (401, b"wrong user or password\n"))
            allowed = self.get(path, b"Authorization: " + basic(SCRAPER, PASSWORD) + b"\r\n")
            self.assertEqual(allowed.status, 200)
            self.assertIn(b"node1.example", allowed.body)

    def test_network_refused(self) -> None:
        """With --scrape-allow-cidr not covering the peer: 403, nothing listed."""
        self.site = self.make_site(
            scraper_auth=ScraperAuth(networks=parse_networks(["10.0.0.0/8"])))
        self.poll(b"node1.example")
        for path in self.PATHS:
            refused = self.get(path)
            self.assertEqual((refused.status, refused.body),
                             (403, b"address 127.0.0.1 is not allowed to scrape\n"))

    def test_switched_off_with_clients_endpoint(self) -> None:
        """--no-clients-endpoint turns both off: the 404 hint answers instead."""
        self.site = self.make_site(clients_endpoint=False)
        self.poll(b"node1.example")
        for path in (*self.PATHS, b"/clients"):
            response = self.get(path)
            self.assertEqual((response.status, response.body), (404, NOT_FOUND))

    def test_other_paths_keep_the_hint(self) -> None:
        """Unknown paths beside and below the new ones still get the 404 hint."""
        for path in (b"/nothing", b"/api", b"/api/", b"/api/v1", b"/api/v1/other",
                     b"/api/v2/clients", b"/index.html"):
            response = self.get(path)
            self.assertEqual((response.status, response.body), (404, NOT_FOUND), path)

    def test_counted_under_their_paths(self) -> None:
        """Requests to the page and the view appear in pushprox_http_requests_total."""
        self.get(b"/")
        self.get(b"/api/v1/clients")
        metrics = self.get(b"/metrics").body.decode()
        self.assertIn('pushprox_http_requests_total{code="200",path="/"} 1.0', metrics)
        self.assertIn(
            'pushprox_http_requests_total{code="200",path="/api/v1/clients"} 1.0', metrics)


class RecordTests(StatusTestCase):
    """What the coordinator keeps per client for the page."""

    def test_idle_client_keeps_no_record(self) -> None:
        """A client never scraped carries no scrape record (memory per idle client)."""
        self.poll(b"node1.example")
        [client] = self.coordinator.clients()
        self.assertIsNone(client.scrapes)
        self.assertFalse(hasattr(client, "__dict__"))

    def test_unknown_fqdn_not_recorded(self) -> None:
        """A scrape of an unregistered FQDN leaves no client behind."""
        self.scrape(b"http://nobody.example:9100/metrics")
        self.coordinator.record_scrape("nobody.example", 404, 0.0, "no client")
        self.assertEqual(self.coordinator.client_statuses(), [])

    def test_statuses_are_copies(self) -> None:
        """A snapshot does not change when later scrapes are recorded."""
        coordinator = Coordinator(self.clock)
        coordinator.poll("node1.example", None, None)
        coordinator.record_scrape("node1.example", 200, 0.5, None)
        [before] = coordinator.client_statuses()
        coordinator.record_scrape("node1.example", 502, 0.25, "refused")
        [after] = coordinator.client_statuses()
        self.assertEqual(before.scrapes, ScrapeRecord(
            last_at=T0, last_status=200, last_seconds=0.5, scrapes=1))
        self.assertEqual(after.scrapes, ScrapeRecord(
            last_at=T0, last_status=502, last_seconds=0.25, last_error="refused",
            scrapes=2, errors=1))

    def test_cluster_replica_lists_and_records_its_own_clients(self) -> None:
        """A replica's coordinator keeps the figures where the client polls: locally."""
        local = Coordinator(self.clock)
        # Listing and recording use neither the routing table nor the peers (the
        # coordinator only gives the table its callback for a Redis that lost its data).
        routes = SimpleNamespace(on_lost=None)
        cluster = ClusterCoordinator(local, cast(Any, routes), cast(Any, None), self.clock)
        local.poll("node1.example", None, None)
        cluster.record_scrape("node1.example", 504, 2.5, "too slow")
        cluster.record_scrape("elsewhere.example", 200, 0.1, None)
        self.assertEqual(cluster.client_statuses(), local.client_statuses())
        [client] = cluster.client_statuses()
        self.assertEqual((client.fqdn, client.polls_held), ("node1.example", 1))
        self.assertEqual(client.scrapes, ScrapeRecord(
            last_at=T0, last_status=504, last_seconds=2.5, last_error="too slow",
            scrapes=1, errors=1, timeouts=1))


class SlowCoordinator(Coordinator):
    """A coordinator whose client list arrives later, as a shared store's would."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.listed: Deferred[list[ClientStatus]] = Deferred()

    def client_statuses(self) -> Deferred[list[ClientStatus]]:  # type: ignore[override]
        """The list, once the test fires it."""
        return self.listed


class SharedStoreTests(StatusTestCase):
    """A coordinator that lists its clients asynchronously (cluster mode)."""

    def setUp(self) -> None:
        super().setUp()
        self.slow = SlowCoordinator(self.clock)
        self.coordinator = self.slow
        self.site = self.make_site()

    def test_page_waits_for_the_list(self) -> None:
        """The page is written once the list arrives."""
        connection = self.connect()
        connection.send(b"GET /api/v1/clients HTTP/1.1\r\nHost: proxy\r\n\r\n")
        self.assertIsNone(connection.response())
        self.slow.listed.callback([])
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body)["clients"], [])

    def test_failed_list_is_503(self) -> None:
        """A store that cannot list its clients gives a 503 with the reason, logged."""
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        self.slow.listed.errback(ConnectionError("store down"))
        response = connection.response()
        assert response is not None
        self.assertEqual((response.status, response.body),
                         (503, b"the clients could not be listed\n"))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

