"""
The upstream Go PushProx's messages as recorded on the wire (``tests/data``), read one way
for every test: the outer HTTP message, and the message it carries in its body (the scrape
request of a poll answer, the target's response of a push).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pushprox.shared import wire

#: Where the recordings are.
DATA = Path(__file__).resolve().parent.parent / "data"

#: The Go client's poll (``POST /poll``, FQDN ``localhost``).
GO_CLIENT_POLL = "go-client-poll-request.bin"
#: The Go client's push of a target's answer (1000 bytes of text/plain).
GO_CLIENT_PUSH = "go-client-push-request.bin"
#: The Go client's push of the HTTP/0.0 500 it makes up when the target cannot be scraped.
GO_CLIENT_PUSH_ERROR = "go-client-push-error.bin"
#: The Go proxy's answer to a poll, carrying a scrape request.
GO_PROXY_POLL_ANSWER = "go-proxy-poll-response.bin"

#: The FQDN the Go client polls for in the recordings.
GO_FQDN = "localhost"
#: The scrape Id the Go proxy handed out in the recordings.
GO_ID = b"89b79310-9ed2-4bb2-ad6c-9c786f9485a7"

_SEPARATOR = b"\r\n\r\n"


@dataclass(frozen=True)
class Recording:
    """One recorded HTTP message: its head (without the blank line) and its body."""

    name: str
    head: bytes
    body: bytes

    @property
    def raw(self) -> bytes:
        """The message as it was recorded."""
        return self.head + _SEPARATOR + self.body

    @property
    def inner_head(self) -> bytes:
        """The head of the message in the body (without the blank line)."""
        return self._inner()[0]

    @property
    def inner_body(self) -> bytes:
        """The body of the message in the body: a pushed response's page."""
        return self._inner()[1]

    def _inner(self) -> tuple[bytes, bytes]:
        split = wire.split_head(self.body)
        assert split is not None, f"{self.name}: the body holds no HTTP head"
        return split

    def sent_to(self, host: bytes, scrape_id: bytes | None = None) -> bytes:
        """
        The message as sent to ``host`` (its Host header), for ``scrape_id`` (in place of
        the recorded Id), with the Content-Length of the body that makes.
        """
        body = self.body if scrape_id is None else self.body.replace(GO_ID, scrape_id)
        head = re.sub(rb"(?m)^Host: [^\r]*", b"Host: " + host, self.head)
        head = re.sub(rb"(?m)^Content-Length: \d+", b"Content-Length: %d" % len(body), head)
        return head + _SEPARATOR + body


def recording(name: str) -> Recording:
    """The recording ``name`` of ``tests/data`` (one of the ``GO_*`` names here)."""
    split = wire.split_head((DATA / name).read_bytes())
    assert split is not None, f"{name} has no end of headers"
    head, body = split
    return Recording(name, head, body)
