# -*- test-case-name: tests.test_auth -*-
"""
Who may poll, push and scrape: client tokens, client certificates, scraper passwords
and networks.

Pure decisions on header values, certificate names and addresses; the proxy's
resources call them and turn a ``Denied`` into its status code.  A principal is the
string that names an authenticated client (``cert:node1.example``,
``token:node1.example``); the coordinator hands a scrape only to the principal that
polled for it, and accepts its push only from the same one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Shortest client or peer token accepted: shorter ones can be guessed.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Denied(Exception):
    """A request that may not go on: its status code, one-line reason and challenge."""

    code: int
    message: str
    #: ``(header name, value)`` to send with a 401 or 407, e.g. WWW-Authenticate.
    challenge: tuple[bytes, bytes] | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Credentials:
    """What an Authorization or Proxy-Authorization header carried."""

    scheme: str  # "basic" or "bearer"
    user: str
    secret: str


def parse_authorization(value: bytes | None) -> Credentials | None:
    """Read Basic or Bearer credentials from a header value; None when absent or unreadable."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(b" ")
    scheme_name = scheme.lower()
    rest = rest.strip()
    if scheme_name == b"bearer" and rest:
        return Credentials("bearer", "", rest.decode("utf-8", "replace"))
    if scheme_name == b"basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        user, colon, secret = decoded.partition(":")
        return Credentials("basic", user, secret) if colon else None
    return None


def _lines(path: str, what: str) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]


def load_tokens(path: str) -> dict[str, str]:
    """
    Read a client token file: ``fqdn token`` per line, ``* token`` for a shared one.

    Returns token → FQDN (lowercase) or ``*``.
    """
    tokens: dict[str, str] = {}
    for number, line in _lines(path, "token file"):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'fqdn token', got {len(parts)} fields")
        fqdn, token = parts
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{path}:{number}: token shorter than {MIN_TOKEN_LENGTH} "
                             "characters")
        if token in tokens:
            raise ValueError(f"{path}:{number}: token used twice")
        tokens[token] = fqdn.lower().rstrip(".")
    return tokens


def load_htpasswd(path: str) -> dict[str, bytes]:
    """Read an htpasswd file of bcrypt hashes (``htpasswd -B``): user → hash."""
    users: dict[str, bytes] = {}
    for number, line in _lines(path, "password file"):
        user, colon, hashed = line.partition(":")
        if not colon or not user:
            raise ValueError(f"{path}:{number}: expected 'user:bcrypt-hash'")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"{path}:{number}: only bcrypt hashes are accepted "
                             "(create them with htpasswd -B)")
        users[user] = hashed.encode("ascii")
    return users


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """Parse CIDR networks such as ``10.0.0.0/8`` or ``::1/128``."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value} is not a CIDR network") from None
    return networks


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


class PasswordChecker:
    """
    Checks user/password pairs against bcrypt hashes.

    bcrypt is slow on purpose (tens of milliseconds), too slow for every scrape, so
    pairs that verified are remembered by a keyed digest, a bounded number of them.
    """

    def __init__(self, users: dict[str, bytes], *, cache_size: int = 1024,
                 check: Callable[[bytes, bytes], bool] = _bcrypt_check) -> None:
        self._users = users
        self._check = check
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._key = hashlib.sha256(b"".join(sorted(users.values()))).digest()

    def verify(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s."""
        hashed = self._users.get(user)
        if hashed is None:
            return False
        digest = hmac.new(self._key, hashed + b"\0" + password.encode("utf-8"),
                          hashlib.sha256).digest()
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return True
        if not self._check(password.encode("utf-8"), hashed):
            return False
        self._cache[digest] = None
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True


class ScraperAuth:
    """
    Who may scrape through the proxy, and read /clients and /metrics.

    Scrapes are checked against ``passwords`` (``--scrape-auth``), the proxy's own
    endpoints against ``endpoint_passwords`` (the web configuration file's users) when
    there are some, else against the same ``passwords``.
    """

    def __init__(self, *, networks: Sequence[IPNetwork] = (),
                 passwords: PasswordChecker | None = None,
                 endpoint_passwords: PasswordChecker | None = None) -> None:
        self._networks = list(networks)
        self._passwords = passwords
        self._endpoint_passwords = endpoint_passwords

    @property
    def enabled(self) -> bool:
        """Whether anything is checked at all."""
        return (bool(self._networks) or self._passwords is not None
                or self._endpoint_passwords is not None)

    def replace_passwords(self, passwords: PasswordChecker) -> None:
        """Check passwords with ``passwords`` from now on (a re-read password file)."""
        self._passwords = passwords

    def replace_endpoint_passwords(self, passwords: PasswordChecker | None) -> None:
        """Check the proxy's own endpoints with ``passwords`` from now on (None: as scrapes)."""
        self._endpoint_passwords = passwords

    def check(self, address: str | None, authorization: bytes | None, *,
              proxy: bool) -> None:
        """
        Raise Denied unless the peer's address and credentials are allowed.

        ``proxy`` selects the header family: Proxy-Authorization and 407 for scrapes,
        Authorization and 401 for the proxy's own endpoints.
        """
        if self._networks:
            try:
                ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
                    ipaddress.ip_address(address or ""))
            except ValueError:
                ip = None
            # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip is None or not any(ip in network for network in self._networks):
                raise Denied(403, f"address {address} is not allowed to scrape")
        passwords = self._passwords
        if not proxy and self._endpoint_passwords is not None:
            passwords = self._endpoint_passwords
        if passwords is None:
            return
        code, header = ((407, b"Proxy-Authenticate") if proxy else (401, b"WWW-Authenticate"))
        challenge = (header, b'Basic realm="pushprox"')
        credentials = parse_authorization(authorization)
        if credentials is None or credentials.scheme != "basic":
            raise Denied(code, "credentials required", challenge)
        if not passwords.verify(credentials.user, credentials.secret):
            raise Denied(code, "wrong user or password", challenge)


class ClientAuth:
    """Who may poll and push: a token from a file, a certificate naming the FQDN, or both."""

    def __init__(
        self,
        *,
        token_file: str | None = None,
        tokens: Mapping[str, str] | None = None,
        require_certificate: bool = False,
        names_fqdn: Callable[[list[str], str], bool] | None = None,
    ) -> None:
        self._token_file = token_file
        # ``tokens``: the file as already read (``load_tokens``), so that it is read once.
        self._tokens: dict[str, str] = (
            dict(tokens) if tokens is not None
            else load_tokens(token_file) if token_file else {})
        self._require_certificate = require_certificate
        self._names_fqdn = names_fqdn or (lambda names, fqdn: fqdn in names)

    @property
    def enabled(self) -> bool:
        """Whether clients must authenticate at all."""
        return self._token_file is not None or self._require_certificate

    def reload(self) -> None:
        """Re-read the token file; on error raise ValueError and keep the tokens in force."""
        if self._token_file is None:
            return
        self._tokens = load_tokens(self._token_file)

    def _token_owner(self, authorization: bytes | None) -> str:
        credentials = parse_authorization(authorization)
        if credentials is None:
            raise Denied(401, "client token required",
                         (b"WWW-Authenticate", b'Bearer realm="pushprox"'))
        for token, owner in self._tokens.items():
            if hmac.compare_digest(token.encode("utf-8"), credentials.secret.encode("utf-8")):
                return owner
        raise Denied(401, "unknown client token",
                     (b"WWW-Authenticate", b'Bearer realm="pushprox"'))

    def _certificate(self, names: list[str] | None) -> list[str]:
        if not names:
            raise Denied(401, "a client certificate signed by the client CA is required")
        return names

    def poll_principal(self, fqdn: str, authorization: bytes | None,
                       certificate_names: list[str] | None) -> str | None:
        """The principal polling for ``fqdn``, or Denied (401 unauthenticated, 403 other FQDN)."""
        parts: list[str] = []
        if self._require_certificate:
            names = self._certificate(certificate_names)
            if not self._names_fqdn(names, fqdn):
                raise Denied(403, f"the client certificate does not name {fqdn}")
            parts.append("cert:" + ",".join(sorted(names)))
        if self._token_file is not None:
            owner = self._token_owner(authorization)
            if owner not in ("*", fqdn):
                raise Denied(403, f"this token is not allowed to poll as {fqdn}")
            parts.append("token:" + owner)
        return "|".join(parts) or None

    def push_principal(self, authorization: bytes | None,
                       certificate_names: list[str] | None) -> str | None:
        """The principal pushing, or Denied (401)."""
        parts: list[str] = []
        if self._require_certificate:
            parts.append("cert:" + ",".join(sorted(self._certificate(certificate_names))))
        if self._token_file is not None:
            parts.append("token:" + self._token_owner(authorization))
        return "|".join(parts) or None


class PeerAuth:
    """
    Whether a request comes from another replica of the cluster: the shared peer token.

    A request that carries the peer token header with the wrong token is refused (403);
    one without it is an ordinary request.  The token is compared in constant time and
    never logged.
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    def is_peer(self, presented: bytes | None) -> bool:
        """True for the right token, False without one; raises Denied for a wrong one."""
        if presented is None:
            return False
        if not hmac.compare_digest(presented, self._token):
            raise Denied(403, "wrong peer token")
        return True
