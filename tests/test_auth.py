"""
Unit tests of ``pushprox.shared.auth``: who may poll, push and scrape.

Every mechanism is shown to open for the right credentials and, above all, to stay
closed for missing, wrong and borrowed ones, with the exact status code and challenge.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from functools import partial

import bcrypt
from twisted.logger import ILogObserver, LogEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushprox.shared.auth import (
    ClientAuth,
    Credentials,
    Denied,
    PasswordChecker,
    ScraperAuth,
    load_htpasswd,
    load_tokens,
    parse_authorization,
    parse_networks,
)
from pushprox.shared.tls import certificate_names_fqdn
from tests.harness.credentials import fast_hash
from tests.harness.files import FileTestCase

TOKEN_1 = "node1-token-0123456789abcdef"
TOKEN_2 = "node2-token-0123456789abcdef"
SHARED = "shared-token-0123456789abcdef"
BEARER_CHALLENGE = (b"WWW-Authenticate", b'Bearer realm="pushprox"')


def basic(user: str, password: str) -> bytes:
    """An Authorization header value for HTTP basic authentication."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def bearer(token: str) -> bytes:
    """An Authorization header value carrying a bearer token."""
    return b"Bearer " + token.encode()


@implementer(ILogObserver)
class EventList(list[LogEvent]):
    """A log observer that keeps every event."""

    def __call__(self, event: LogEvent) -> None:
        self.append(event)


class ParseAuthorizationTests(SynchronousTestCase):
    """parse_authorization reads Basic and Bearer credentials and nothing else."""

    def test_basic(self) -> None:
        """Basic credentials are split into user and secret at the first colon."""
        self.assertEqual(parse_authorization(basic("prometheus", "pa:ss word")),
                         Credentials("basic", "prometheus", "pa:ss word"))

    def test_basic_scheme_is_case_insensitive(self) -> None:
        """The scheme name is matched without regard to case."""
        value = b"bAsIc " + base64.b64encode(b"u:p")
        self.assertEqual(parse_authorization(value), Credentials("basic", "u", "p"))

    def test_basic_empty_password(self) -> None:
        """A user with an empty password is read as such, not as no credentials."""
        self.assertEqual(parse_authorization(basic("u", "")), Credentials("basic", "u", ""))

    def test_bearer(self) -> None:
        """A bearer token is the secret; there is no user."""
        self.assertEqual(parse_authorization(b"Bearer " + TOKEN_1.encode()),
                         Credentials("bearer", "", TOKEN_1))

    def test_bearer_without_token(self) -> None:
        """The word Bearer alone carries no credentials."""
        self.assertIsNone(parse_authorization(b"Bearer "))
        self.assertIsNone(parse_authorization(b"Bearer"))

    def test_missing(self) -> None:
        """No header and an empty header are no credentials."""
        self.assertIsNone(parse_authorization(None))
        self.assertIsNone(parse_authorization(b""))

    def test_basic_without_colon(self) -> None:
        """Basic credentials without a colon between user and password are refused."""
        value = b"Basic " + base64.b64encode(b"just-a-token")
        self.assertIsNone(parse_authorization(value))

    def test_basic_not_base64(self) -> None:
        """Basic credentials that are not base64 are refused."""
        self.assertIsNone(parse_authorization(b"Basic not*base64!"))
        self.assertIsNone(parse_authorization(b"Basic dTo"))  # "u:" without its padding

    def test_basic_not_utf8(self) -> None:
        """Basic credentials that do not decode as UTF-8 are refused."""
        self.assertIsNone(parse_authorization(b"Basic " + base64.b64encode(b"u:\xff\xfe")))

    def test_unknown_scheme(self) -> None:
        """Other schemes (Digest, garbage) carry no credentials we read."""
        self.assertIsNone(parse_authorization(b'Digest username="u", realm="r"'))
        self.assertIsNone(parse_authorization(b"garbage"))
        self.assertIsNone(parse_authorization(b"\x00\xff garbage"))


class LoadTokensTests(FileTestCase):
    """load_tokens reads 'fqdn token' lines and refuses anything doubtful, naming file:line."""

    def test_valid(self) -> None:
        """Tokens map to their lowercase FQDN without a trailing dot, or to '*'."""
        path = self.write("tokens", f"Node1.Example. {TOKEN_1}\n"
                                    f"node2.example\t{TOKEN_2}\n* {SHARED}\n")
        self.assertEqual(load_tokens(path), {TOKEN_1: "node1.example",
                                             TOKEN_2: "node2.example", SHARED: "*"})

    def test_comments_and_blank_lines(self) -> None:
        """Comments and blank lines are skipped."""
        path = self.write("tokens", f"# clients\n\n   # indented comment\nnode1.example "
                                    f"{TOKEN_1}\n   \n")
        self.assertEqual(load_tokens(path), {TOKEN_1: "node1.example"})

    def test_empty_file(self) -> None:
        """A file without tokens gives no tokens (every client is then refused)."""
        self.assertEqual(load_tokens(self.write("tokens", "# none yet\n")), {})

    def test_short_token(self) -> None:
        """A token shorter than 16 characters is refused with its file and line."""
        path = self.write("tokens", f"# c\nnode1.example {TOKEN_1}\nnode2.example "
                                    "fifteen-chars-x\n")
        with self.assertRaises(ValueError) as caught:
            load_tokens(path)
        self.assertEqual(str(caught.exception),
                         f"{path}:3: token shorter than 16 characters")

    def test_sixteen_characters_is_enough(self) -> None:
        """A token of exactly 16 characters is accepted."""
        path = self.write("tokens", "node1.example sixteen-chars-xx\n")
        self.assertEqual(load_tokens(path), {"sixteen-chars-xx": "node1.example"})

    def test_duplicate_token(self) -> None:
        """One token for two FQDNs is refused: it would identify neither."""
        path = self.write("tokens", f"node1.example {TOKEN_1}\n\nnode2.example {TOKEN_1}\n")
        with self.assertRaises(ValueError) as caught:
            load_tokens(path)
        self.assertEqual(str(caught.exception), f"{path}:3: token used twice")

    def test_wrong_field_count(self) -> None:
        """A line with one or three fields is refused with the count."""
        for line, count in ((TOKEN_1, 1), (f"node1.example {TOKEN_1} extra", 3)):
            path = self.write("tokens", f"# header\n{line}\n")
            with self.assertRaises(ValueError) as caught:
                load_tokens(path)
            self.assertEqual(str(caught.exception),
                             f"{path}:2: expected 'fqdn token', got {count} fields")

    def test_secrets_not_in_errors(self) -> None:
        """The error for a bad line does not repeat the token it holds."""
        for text in (f"node1.example {TOKEN_1} extra\n",
                     f"a.example {TOKEN_1}\nb.example {TOKEN_1}\n"):
            with self.assertRaises(ValueError) as caught:
                load_tokens(self.write("tokens", text))
            self.assertNotIn(TOKEN_1, str(caught.exception))

    def test_missing_file(self) -> None:
        """A file that cannot be read is a ValueError naming it."""
        path = os.path.join(self.write("tokens", ""), "absent")
        with self.assertRaises(ValueError) as caught:
            load_tokens(path)
        self.assertTrue(str(caught.exception).startswith(f"cannot read token file {path}: "),
                        str(caught.exception))


class LoadHtpasswdTests(FileTestCase):
    """load_htpasswd accepts bcrypt hashes only."""

    def test_bcrypt(self) -> None:
        """Every bcrypt flavour that htpasswd -B and bcrypt write is accepted."""
        hashed = fast_hash(b"pw").decode()
        text = "".join(f"user{n}:{prefix}{hashed[4:]}\n"
                       for n, prefix in enumerate(("$2a$", "$2b$", "$2y$")))
        users = load_htpasswd(self.write("htpasswd", "# scrapers\n\n" + text))
        self.assertEqual(users, {f"user{n}": f"{prefix}{hashed[4:]}".encode()
                                 for n, prefix in enumerate(("$2a$", "$2b$", "$2y$"))})

    def test_other_hashes_refused(self) -> None:
        """MD5 (apr1), SHA1, crypt and plain text passwords are refused with file:line."""
        for hashed in ("$apr1$salt$0123456789abcdefghijkl", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
                       "rl0hYfC3Vu0rw", "plaintext"):
            path = self.write("htpasswd", f"# scrapers\nprometheus:{hashed}\n")
            with self.assertRaises(ValueError) as caught:
                load_htpasswd(path)
            self.assertEqual(str(caught.exception),
                             f"{path}:2: only bcrypt hashes are accepted "
                             "(create them with htpasswd -B)")

    def test_missing_colon_or_user(self) -> None:
        """A line without 'user:' is refused with file:line."""
        hashed = fast_hash(b"pw").decode()
        for line in ("prometheus", f":{hashed}"):
            path = self.write("htpasswd", f"{line}\n")
            with self.assertRaises(ValueError) as caught:
                load_htpasswd(path)
            self.assertEqual(str(caught.exception), f"{path}:1: expected 'user:bcrypt-hash'")


class ParseNetworksTests(SynchronousTestCase):
    """parse_networks reads CIDR networks and refuses anything else."""

    def test_networks(self) -> None:
        """IPv4 and IPv6 networks and single addresses are read; host bits are dropped."""
        self.assertEqual([str(n) for n in parse_networks(["10.1.2.3/8", "::1/128", "192.0.2.7"])],
                         ["10.0.0.0/8", "::1/128", "192.0.2.7/32"])

    def test_nonsense(self) -> None:
        """Something that is not a network is a ValueError naming it."""
        for value in ("nonsense", "10.0.0.0/33", ""):
            with self.assertRaises(ValueError) as caught:
                parse_networks([value])
            self.assertEqual(str(caught.exception), f"{value} is not a CIDR network")


class CountingCheck:
    """A stand-in for bcrypt.checkpw that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls.append((password, hashed))
        return bcrypt.checkpw(password, hashed)


class PasswordCheckerTests(SynchronousTestCase):
    """PasswordChecker verifies bcrypt passwords, and runs bcrypt once per credential."""

    def setUp(self) -> None:
        self.users = {"prometheus": fast_hash(b"right"), "grafana": fast_hash(b"other")}

    def test_right_password(self) -> None:
        """The right password verifies (with the real bcrypt)."""
        self.assertTrue(PasswordChecker(self.users).verify("prometheus", "right"))

    def test_wrong_password_or_unknown_user(self) -> None:
        """A wrong password, another user's, or a user not in the file does not verify."""
        checker = PasswordChecker(self.users)
        cases = [("prometheus", "wrong"), ("prometheus", "other"), ("prometheus", ""),
                 ("prometheus", "right "), ("nobody", "right"), ("", "right")]
        self.assertEqual([(user, password, checker.verify(user, password))
                          for user, password in cases],
                         [(user, password, False) for user, password in cases])

    def test_unusable_hash(self) -> None:
        """A hash that bcrypt cannot read fails closed instead of raising."""
        checker = PasswordChecker({"broken": b"$2b$99$notahash"})
        self.assertFalse(checker.verify("broken", "anything"))

    def test_bcrypt_runs_once_for_repeated_checks(self) -> None:
        """A pair that verified is remembered: bcrypt runs once for many checks."""
        check = CountingCheck()
        checker = PasswordChecker(self.users, check=check)
        results = [checker.verify("prometheus", "right") for _ in range(5)]
        self.assertEqual(results, [True] * 5)
        self.assertEqual(check.calls, [(b"right", self.users["prometheus"])])

    def test_failures_are_not_remembered(self) -> None:
        """A wrong password is checked every time, and never turns into a success."""
        check = CountingCheck()
        checker = PasswordChecker(self.users, check=check)
        self.assertEqual([checker.verify("prometheus", "wrong") for _ in range(3)],
                         [False] * 3)
        self.assertEqual(len(check.calls), 3)

    def test_cache_is_per_user(self) -> None:
        """A remembered password does not open another user's account."""
        check = CountingCheck()
        checker = PasswordChecker(self.users, check=check)
        self.assertTrue(checker.verify("prometheus", "right"))
        self.assertFalse(checker.verify("grafana", "right"))
        self.assertEqual(len(check.calls), 2)

    def test_cache_is_bounded(self) -> None:
        """At most cache_size pairs are remembered; the least recently used goes first."""
        users = {f"user{n}": fast_hash(b"pw%d" % n) for n in range(3)}
        check = CountingCheck()
        checker = PasswordChecker(users, cache_size=2, check=check)
        for n in range(3):
            self.assertTrue(checker.verify(f"user{n}", f"pw{n}"))
        self.assertEqual(len(check.calls), 3)
        # user1 and user2 are remembered; user0 was evicted and costs bcrypt again.
        self.assertTrue(checker.verify("user2", "pw2"))
        self.assertTrue(checker.verify("user1", "pw1"))
        self.assertEqual(len(check.calls), 3)
        self.assertTrue(checker.verify("user0", "pw0"))
        self.assertEqual([password for password, _ in check.calls],
                         [b"pw0", b"pw1", b"pw2", b"pw0"])
        # Remembering user0 evicted user2, the least recently used.
        self.assertTrue(checker.verify("user1", "pw1"))
        self.assertTrue(checker.verify("user2", "pw2"))
        self.assertEqual(len(check.calls), 5)


class ScraperAuthTests(SynchronousTestCase):
    """ScraperAuth lets only allowed networks and right passwords scrape."""

    def setUp(self) -> None:
        self.passwords = PasswordChecker({"prometheus": fast_hash(b"right")})

    def assertDenied(self, auth: ScraperAuth, address: str | None,
                     authorization: bytes | None, proxy: bool, expected: Denied) -> None:
        """``check`` raises exactly ``expected``."""
        with self.assertRaises(Denied) as caught:
            auth.check(address, authorization, proxy=proxy)
        self.assertEqual(caught.exception, expected)

    def assertAllowed(self, auth: ScraperAuth, address: str | None,
                      authorization: bytes | None, proxy: bool) -> None:
        """``check`` lets the request through (it raises nothing)."""
        try:
            auth.check(address, authorization, proxy=proxy)
        except Denied as denied:
            self.fail(f"{address} {authorization!r} proxy={proxy}: {denied!r}")

    def test_disabled(self) -> None:
        """Without networks or passwords nothing is checked."""
        auth = ScraperAuth()
        self.assertFalse(auth.enabled)
        self.assertAllowed(auth, None, None, True)

    def test_enabled(self) -> None:
        """A network list or a password file enables the checks."""
        self.assertTrue(ScraperAuth(networks=parse_networks(["10.0.0.0/8"])).enabled)
        self.assertTrue(ScraperAuth(passwords=self.passwords).enabled)

    def test_allowed_network(self) -> None:
        """An address inside an allowed network passes; no credentials are needed."""
        auth = ScraperAuth(networks=parse_networks(["10.0.0.0/8", "2001:db8::/32"]))
        self.assertAllowed(auth, "10.20.30.40", None, True)
        self.assertAllowed(auth, "2001:db8::5", None, True)

    def test_other_network_403(self) -> None:
        """An address outside every allowed network gets 403 without a challenge."""
        auth = ScraperAuth(networks=parse_networks(["10.0.0.0/8"]))
        for address in ("127.0.0.1", "11.0.0.1", "::1"):
            self.assertDenied(auth, address, None, True,
                              Denied(403, f"address {address} is not allowed to scrape"))

    def test_no_address_403(self) -> None:
        """A peer without an IP address (a UNIX socket) or a garbled one gets 403."""
        auth = ScraperAuth(networks=parse_networks(["10.0.0.0/8"]))
        self.assertDenied(auth, None, None, True,
                          Denied(403, "address None is not allowed to scrape"))
        self.assertDenied(auth, "not-an-ip", None, True,
                          Denied(403, "address not-an-ip is not allowed to scrape"))

    def test_ipv4_mapped_address_in_allowed_network(self) -> None:
        """
        A scraper reaching a dual-stack listener (``tcp6:8080``) from 10.1.2.3 appears as
        ``::ffff:10.1.2.3``: it is inside 10.0.0.0/8 and must be allowed.
        """
        auth = ScraperAuth(networks=parse_networks(["10.0.0.0/8"]))
        self.assertAllowed(auth, "::ffff:10.1.2.3", None, True)
        self.assertDenied(auth, "::ffff:11.1.2.3", None, True,
                          Denied(403, "address ::ffff:11.1.2.3 is not allowed to scrape"))

    def test_network_checked_before_password(self) -> None:
        """The right password does not help from outside the allowed networks."""
        auth = ScraperAuth(networks=parse_networks(["10.0.0.0/8"]), passwords=self.passwords)
        self.assertDenied(auth, "127.0.0.1", basic("prometheus", "right"), True,
                          Denied(403, "address 127.0.0.1 is not allowed to scrape"))
        self.assertAllowed(auth, "10.0.0.1", basic("prometheus", "right"), True)

    def test_missing_credentials_proxy_407(self) -> None:
        """A scrape without Proxy-Authorization gets 407 and a Proxy-Authenticate challenge."""
        auth = ScraperAuth(passwords=self.passwords)
        challenge = (b"Proxy-Authenticate", b'Basic realm="pushprox"')
        for authorization in (None, b"", b"Bearer something", b"Basic !!!"):
            self.assertDenied(auth, "127.0.0.1", authorization, True,
                              Denied(407, "credentials required", challenge))

    def test_missing_credentials_endpoint_401(self) -> None:
        """A request for /clients or /metrics without Authorization gets 401 and a challenge."""
        auth = ScraperAuth(passwords=self.passwords)
        self.assertDenied(auth, "127.0.0.1", None, False,
                          Denied(401, "credentials required",
                                 (b"WWW-Authenticate", b'Basic realm="pushprox"')))

    def test_wrong_password(self) -> None:
        """A wrong password or user gets the same code and challenge as none at all."""
        auth = ScraperAuth(passwords=self.passwords)
        for user, password in (("prometheus", "wrong"), ("nobody", "right")):
            self.assertDenied(auth, "127.0.0.1", basic(user, password), True,
                              Denied(407, "wrong user or password",
                                     (b"Proxy-Authenticate", b'Basic realm="pushprox"')))
            self.assertDenied(auth, "127.0.0.1", basic(user, password), False,
                              Denied(401, "wrong user or password",
                                     (b"WWW-Authenticate", b'Basic realm="pushprox"')))

    def test_right_password(self) -> None:
        """The right user and password pass, in either header family."""
        auth = ScraperAuth(passwords=self.passwords)
        self.assertAllowed(auth, "127.0.0.1", basic("prometheus", "right"), True)
        self.assertAllowed(auth, None, basic("prometheus", "right"), False)


class ClientAuthTestCase(FileTestCase):
    """Tests of ClientAuth decisions."""

    def assertDenied(self, call: Callable[[], object], expected: Denied) -> None:
        """Calling ``call`` raises exactly ``expected``."""
        with self.assertRaises(Denied) as caught:
            call()
        self.assertEqual(caught.exception, expected)


class ClientAuthTokenTests(ClientAuthTestCase):
    """ClientAuth with --client-tokens: a token names the FQDN it may poll as."""

    def setUp(self) -> None:
        self.path = self.write("tokens", f"node1.example {TOKEN_1}\n"
                                         f"node2.example {TOKEN_2}\n* {SHARED}\n")
        self.auth = ClientAuth(token_file=self.path)

    def test_disabled(self) -> None:
        """Without tokens or certificates anyone may poll and push, with no principal."""
        auth = ClientAuth()
        self.assertFalse(auth.enabled)
        self.assertIsNone(auth.poll_principal("node1.example", None, None))
        self.assertIsNone(auth.push_principal(None, None))

    def test_enabled(self) -> None:
        """A token file enables client authentication."""
        self.assertTrue(self.auth.enabled)

    def test_own_token(self) -> None:
        """A token polls as its own FQDN, as Bearer or as the basic-auth password."""
        self.assertEqual(self.auth.poll_principal("node1.example", bearer(TOKEN_1), None),
                         "token:node1.example")
        self.assertEqual(
            self.auth.poll_principal("node1.example", basic("anyone", TOKEN_1), None),
            "token:node1.example",
        )

    def test_shared_token(self) -> None:
        """The shared token polls as any FQDN, under the shared principal."""
        for fqdn in ("node1.example", "elsewhere.example"):
            self.assertEqual(self.auth.poll_principal(fqdn, bearer(SHARED), None), "token:*")

    def test_token_of_another_fqdn_403(self) -> None:
        """node2's token may not poll as node1: 403, no challenge."""
        self.assertDenied(
            lambda: self.auth.poll_principal("node1.example", bearer(TOKEN_2), None),
            Denied(403, "this token is not allowed to poll as node1.example"),
        )

    def test_missing_token_401(self) -> None:
        """No credentials, or unreadable ones, get 401 with a Bearer challenge."""
        for authorization in (None, b"", b"Bearer", b"Basic !!!"):
            self.assertDenied(
                partial(self.auth.poll_principal, "node1.example", authorization, None),
                Denied(401, "client token required", BEARER_CHALLENGE),
            )
        self.assertDenied(lambda: self.auth.push_principal(None, None),
                          Denied(401, "client token required", BEARER_CHALLENGE))

    def test_unknown_token_401(self) -> None:
        """A token not in the file, or a prefix or extension of one, gets 401."""
        for token in ("unknown-token-0123456789", TOKEN_1[:-1], TOKEN_1 + "x", ""):
            self.assertDenied(
                partial(self.auth.poll_principal, "node1.example", basic("u", token), None),
                Denied(401, "unknown client token", BEARER_CHALLENGE),
            )
            self.assertDenied(
                partial(self.auth.push_principal, basic("u", token), None),
                Denied(401, "unknown client token", BEARER_CHALLENGE),
            )

    def test_a_certificate_does_not_replace_the_token(self) -> None:
        """Without --client-ca, certificate names do not stand in for a token."""
        self.assertDenied(
            lambda: self.auth.poll_principal("node1.example", None, ["node1.example"]),
            Denied(401, "client token required", BEARER_CHALLENGE),
        )

    def test_push_principal_equals_poll_principal(self) -> None:
        """The same token gives the same principal for a poll and a push, in either form."""
        for authorization in (bearer(TOKEN_1), basic("x", TOKEN_1)):
            self.assertEqual(self.auth.push_principal(authorization, None),
                             self.auth.poll_principal("node1.example", bearer(TOKEN_1), None))
        self.assertNotEqual(self.auth.push_principal(bearer(TOKEN_2), None),
                            self.auth.poll_principal("node1.example", bearer(TOKEN_1), None))

    def test_reload_picks_up_changes(self) -> None:
        """reload() reads the file again: new tokens work, removed ones stop working."""
        new = "node1-new-token-0123456789"
        self.write("tokens", f"node1.example {new}\n")
        self.auth.reload()
        self.assertEqual(self.auth.poll_principal("node1.example", bearer(new), None),
                         "token:node1.example")
        self.assertDenied(
            lambda: self.auth.poll_principal("node1.example", bearer(TOKEN_1), None),
            Denied(401, "unknown client token", BEARER_CHALLENGE),
        )

    def test_reload_keeps_old_tokens_when_the_new_file_is_invalid(self) -> None:
        """A broken file, or no file at all, is refused with the reason; the tokens in
        force stay."""
        self.write("tokens", f"node1.example {TOKEN_1}\nnode3.example short\n")
        error = self.assertRaises(ValueError, self.auth.reload)
        self.assertEqual(str(error), f"{self.path}:2: token shorter than 16 characters")
        os.remove(self.path)
        error = self.assertRaises(ValueError, self.auth.reload)
        self.assertTrue(str(error).startswith(f"cannot read token file {self.path}: "),
                        str(error))
        self.assertEqual(self.auth.poll_principal("node2.example", bearer(TOKEN_2), None),
                         "token:node2.example")


class ClientAuthCertificateTests(ClientAuthTestCase):
    """ClientAuth with --client-ca: the certificate's DNS names must cover the FQDN."""

    def setUp(self) -> None:
        self.auth = ClientAuth(require_certificate=True, names_fqdn=certificate_names_fqdn)

    def test_enabled(self) -> None:
        """Requiring a certificate enables client authentication."""
        self.assertTrue(self.auth.enabled)

    def test_certificate_naming_the_fqdn(self) -> None:
        """A certificate that names the FQDN polls as it; the principal lists its names."""
        self.assertEqual(
            self.auth.poll_principal("node1.example", None, ["node1.example", "alias.example"]),
            "cert:alias.example,node1.example",
        )

    def test_no_certificate_401(self) -> None:
        """Without a certificate, polls and pushes get 401 (a token does not help)."""
        expected = Denied(401, "a client certificate signed by the client CA is required")
        no_names: list[list[str] | None] = [None, []]
        for names in no_names:
            self.assertDenied(
                partial(self.auth.poll_principal, "node1.example", bearer(TOKEN_1), names),
                expected,
            )
            self.assertDenied(partial(self.auth.push_principal, None, names), expected)

    def test_certificate_not_naming_the_fqdn_403(self) -> None:
        """
        A valid certificate that does not name the FQDN gets 403; a wildcard covers exactly
        one label (service-identity's rules), and one directly under a top-level label
        (``*.example``) names nothing.
        """
        cases = [
            ("node1.example", ["node2.example"]),
            ("a.node1.nodes.example", ["*.nodes.example"]),
            ("nodes.example", ["*.nodes.example"]),
            ("node1.example", ["*.nodes.example"]),
            ("node1.example", ["*.example"]),
        ]
        for fqdn, names in cases:
            self.assertDenied(
                partial(self.auth.poll_principal, fqdn, None, names),
                Denied(403, f"the client certificate does not name {fqdn}"),
            )

    def test_wildcard(self) -> None:
        """A wildcard covers a name one label below it."""
        self.assertEqual(self.auth.poll_principal("node1.nodes.example", None,
                                                  ["*.nodes.example"]),
                         "cert:*.nodes.example")

    def test_default_names_check_is_exact(self) -> None:
        """Without a names_fqdn function, only an exact name matches (no wildcards)."""
        auth = ClientAuth(require_certificate=True)
        self.assertEqual(auth.poll_principal("node1.example", None, ["node1.example"]),
                         "cert:node1.example")
        self.assertDenied(lambda: auth.poll_principal("node1.example", None, ["*.example"]),
                          Denied(403, "the client certificate does not name node1.example"))

    def test_push_principal_equals_poll_principal(self) -> None:
        """The same certificate gives the same principal for a poll and a push."""
        names = ["node1.example", "alias.example"]
        self.assertEqual(self.auth.push_principal(None, list(reversed(names))),
                         self.auth.poll_principal("node1.example", None, names))
        self.assertNotEqual(self.auth.push_principal(None, ["node2.example"]),
                            self.auth.poll_principal("node1.example", None, names))

    def test_certificate_and_token(self) -> None:
        """With both, both are needed and both are part of the principal."""
        path = self.write("tokens", f"node1.example {TOKEN_1}\nnode2.example {TOKEN_2}\n")
        auth = ClientAuth(token_file=path, require_certificate=True,
                          names_fqdn=certificate_names_fqdn)
        names = ["node1.example"]
        principal = auth.poll_principal("node1.example", bearer(TOKEN_1), names)
        self.assertEqual(principal, "cert:node1.example|token:node1.example")
        self.assertEqual(auth.push_principal(bearer(TOKEN_1), names), principal)
        self.assertDenied(lambda: auth.poll_principal("node1.example", None, names),
                          Denied(401, "client token required", BEARER_CHALLENGE))
        self.assertDenied(lambda: auth.poll_principal("node1.example", bearer(TOKEN_1), None),
                          Denied(401, "a client certificate signed by the client CA is "
                                      "required"))
        self.assertDenied(lambda: auth.poll_principal("node1.example", bearer(TOKEN_2), names),
                          Denied(403, "this token is not allowed to poll as node1.example"))
        self.assertDenied(
            lambda: auth.poll_principal("node1.example", bearer(TOKEN_1), ["node2.example"]),
            Denied(403, "the client certificate does not name node1.example"),
        )
