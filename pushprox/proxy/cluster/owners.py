# -*- test-case-name: tests.test_cluster -*-
"""
Which replica owns a scrape, read from the scrape's id, so a push finds it without Redis.

A replica's scrape ids begin with ``REPLICA.URL.SEAL.``: its id (new at every start), its
peer URL (base64url), and a seal over both made with the peer token (HMAC-SHA256, 96
bits, base64url).  A push carrying such an id goes to that URL; without the token no one
can make an id that sends a push, and the peer token with it, anywhere else.  The ids are
opaque to the clients, which send them back as they got them (upstream's included).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

#: Bytes of the HMAC kept in a scrape id.
SEAL_SIZE = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Owner:
    """The replica a scrape id names."""

    replica: str
    #: Its peer URL, when the id carries one with a valid seal.
    url: str | None


class OwnerSeal:
    """Makes and reads the owner part of this cluster's scrape ids (keyed by the peer token)."""

    def __init__(self, token: str) -> None:
        self._key = token.encode("utf-8")

    def _seal(self, replica: str, url: str) -> bytes:
        message = replica.encode("utf-8") + b"\n" + url.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()[:SEAL_SIZE]

    def prefix(self, replica: str, url: str) -> str:
        """What every scrape id of ``replica`` at ``url`` begins with."""
        return f"{replica}.{_b64(url.encode('utf-8'))}.{_b64(self._seal(replica, url))}."

    def owner(self, scrape_id: str) -> Owner | None:
        """
        The replica ``scrape_id`` names, with its URL when the seal holds; ``None`` for an
        id that names no replica (a single proxy's, or a malformed one).
        """
        parts = scrape_id.split(".", 3)
        if len(parts) < 2 or not parts[0]:
            return None
        if len(parts) < 4:
            # REPLICA.RANDOM: an id that carries no URL.
            return Owner(parts[0], None)
        replica, encoded_url, encoded_seal, _ = parts
        try:
            url = _unb64(encoded_url).decode("utf-8")
            seal = _unb64(encoded_seal)
        except (binascii.Error, ValueError):
            return Owner(replica, None)
        if not hmac.compare_digest(seal, self._seal(replica, url)):
            return Owner(replica, None)
        return Owner(replica, url)
