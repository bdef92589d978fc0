"""
The proxy's endpoints, declared once (``pushprox.proxy.site.ENDPOINTS``): the resource
tree, the routing of the hot endpoints, the 404 text, the metrics labels and the guards
all follow the table.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.web.resource import Resource

from pushprox.proxy import site
from pushprox.proxy.site import ENDPOINTS, Guard, PushProxSite
from pushprox.shared.auth import ClientAuth, PasswordChecker, ScraperAuth
from tests.harness.credentials import fast_hash
from tests.test_proxy import ProxyTestCase, Response, post
from tests.test_status import NOT_FOUND

SCRAPER = "prometheus"
PASSWORD = "endpoint-table-password-8c2e"


class EndpointTableTests(ProxyTestCase):
    """What the site serves is what the table says, and nothing else."""

    def request(self, path: bytes, body: bytes = b"") -> Response:
        """A request to ``path``: a POST for the clients' endpoints, else a GET."""
        connection = self.connect()
        if path.startswith((b"/poll", b"/push")):
            connection.send(post(path, body))
        else:
            connection.send(b"GET " + path + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
        response = connection.response()
        assert response is not None
        return response

    def test_the_404_text_lists_the_table(self) -> None:
        """The hint of a 404 names every endpoint of the table, in its order."""
        paths = " ".join(endpoint.path for endpoint in ENDPOINTS)
        self.assertIn(f"endpoints {paths})".encode(), NOT_FOUND)
        response = self.request(b"/nothing")
        self.assertEqual((response.status, response.body), (404, NOT_FOUND))

    def test_every_endpoint_is_served_and_counted_under_its_path(self) -> None:
        """Each endpoint answers at its path (not the 404), counted under its label."""
        for endpoint in ENDPOINTS:
            response = self.request(endpoint.path.encode())
            self.assertNotEqual(response.body, NOT_FOUND, endpoint.path)
        metrics = self.request(b"/metrics").body.decode()
        for endpoint in ENDPOINTS:
            self.assertIn(f'path="{endpoint.path}"', metrics, endpoint.path)

    def test_hot_endpoints_serve_the_paths_below_them(self) -> None:
        """A hot endpoint is one segment, routed without the tree, with any path below it."""
        for endpoint in ENDPOINTS:
            if endpoint.hot:
                self.assertEqual(len(endpoint.segments), 1, endpoint.path)
                self.assertNotEqual(endpoint.segments, [b""], endpoint.path)
        self.assertEqual(self.request(b"/poll/below").status, 400)  # an empty poll body
        self.assertEqual(self.request(b"/push/below").status, 400)  # an empty push body
        self.assertEqual(self.request(b"/pollx").body, NOT_FOUND)
        self.assertEqual(self.request(b"/api/v1/other").body, NOT_FOUND)

    def test_only_the_streaming_endpoint_streams(self) -> None:
        """``is_push_path`` is the table's streaming endpoint, and paths below it."""
        streaming = [endpoint.path for endpoint in ENDPOINTS if endpoint.streams]
        self.assertEqual(streaming, ["/push"])
        self.assertTrue(site.is_push_path(b"/push"))
        self.assertTrue(site.is_push_path(b"/push/x"))
        for path in (b"/pushx", b"/poll", b"/", b"push", b""):
            self.assertFalse(site.is_push_path(path), path)

    def test_switches_turn_endpoints_off(self) -> None:
        """An endpoint switched off answers the 404 hint, the others stay."""
        self.site = PushProxSite(self.coordinator, clock=self.clock, config=self.config,
                                 reactor=Clock(), clients_endpoint=False,
                                 metrics_endpoint=False)
        for endpoint in ENDPOINTS:
            response = self.request(endpoint.path.encode())
            if endpoint.switch is None:
                self.assertNotEqual(response.body, NOT_FOUND, endpoint.path)
            else:
                self.assertEqual((response.status, response.body), (404, NOT_FOUND),
                                 endpoint.path)

    def test_guards_are_what_the_table_says(self) -> None:
        """With client and scraper authentication on, each endpoint asks for its own."""
        checker = PasswordChecker({SCRAPER: fast_hash(PASSWORD.encode())})
        self.site = PushProxSite(
            self.coordinator, clock=self.clock, config=self.config, reactor=Clock(),
            scraper_auth=ScraperAuth(passwords=checker),
            client_auth=ClientAuth(require_certificate=True))
        for endpoint in ENDPOINTS:
            response = self.request(endpoint.path.encode(), b"node1.example")
            if endpoint.guard is Guard.SCRAPERS:
                self.assertEqual((response.status, response.body),
                                 (401, b"credentials required\n"), endpoint.path)
            elif endpoint.guard is Guard.CLIENTS:
                self.assertEqual(
                    (response.status, response.body),
                    (401, b"a client certificate signed by the client CA is required\n"),
                    endpoint.path)
            else:
                self.assertEqual(response.status, 200, endpoint.path)

    def test_the_tree_is_made_of_the_paths(self) -> None:
        """A path of several segments is reached through directories that 404 otherwise."""
        leaf, not_found = Resource(), Resource()
        root = site._tree({"/a/b/c": leaf, "/a/d": leaf}, not_found)
        a = root.children[b"a"]
        self.assertIs(a.children[b"b"].children[b"c"], leaf)
        self.assertIs(a.children[b"d"], leaf)
        self.assertIs(a.getChild(b"other", None), not_found)
