"""Scrapers' passwords as the tests hash them, and the web configuration files that hold them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import bcrypt


def fast_hash(password: bytes) -> bytes:
    """A bcrypt hash with the cheapest work factor, so that tests stay fast."""
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))


def write_web_config(directory: Path, *, users: Mapping[str, str],
                     headers: Mapping[str, str]) -> Path:
    """
    ``web.yml`` in ``directory``: TLS from ``server.crt`` and ``server.key`` beside it
    (``Stack.web_config_certificate``), ``headers`` on every answer, and ``users`` (name to
    password, hashed here) for basic auth; its path.
    """
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key",
             "http_server_config:", "  headers:"]
    lines.extend(f"    {name}: {value}" for name, value in headers.items())
    lines.append("basic_auth_users:")
    lines.extend(f"  {name}: {fast_hash(password.encode()).decode()}"
                 for name, password in users.items())
    web = directory / "web.yml"
    web.write_text("\n".join(lines) + "\n")
    return web
