# -*- test-case-name: tests.test_web_config -*-
"""
``--web.config.file``: Prometheus' web configuration file (exporter-toolkit's format).

The YAML file every exporter and Prometheus itself read for TLS and basic auth:
``tls_server_config`` (``cert_file``, ``key_file``, ``client_auth_type``,
``client_ca_file``, ``min_version``, ``max_version``, ``cipher_suites``,
``prefer_server_cipher_suites``), ``http_server_config`` (``http2``, ``headers``) and
``basic_auth_users`` (bcrypt hashes).  As exporter-toolkit does, an unknown field is
refused, naming it, and file names are relative to the file's directory.  Fields of the
format that pushprox cannot honour (inline certificates, ``client_allowed_sans``,
``curve_preferences``, ``rate_limit``, the client-authentication types that verify
nothing) are refused too, saying so, rather than accepted and ignored.  Parsing only:
nothing here opens a certificate or a socket.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CLIENT_AUTH_TYPES", "TLSServerConfig", "WebConfig", "load_web_config"]

#: exporter-toolkit's client authentication types that pushprox honours, and whether
#: each requires a certificate (True), verifies one if given (False) or asks none (None).
CLIENT_AUTH_TYPES: Mapping[str, bool | None] = {
    "NoClientCert": None,
    "VerifyClientCertIfGiven": False,
    "RequireAndVerifyClientCert": True,
}
#: Response headers the file may set, and the values each accepts (None: any).
_HEADERS: Mapping[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_TLS_FIELDS = frozenset({
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
    "max_version", "cipher_suites", "prefer_server_cipher_suites",
})
#: Fields of the format that pushprox refuses, and why.
_UNSUPPORTED = {
    "tls_server_config.cert": "give the certificate as cert_file",
    "tls_server_config.key": "give the key as key_file",
    "tls_server_config.client_ca": "give the client CA as client_ca_file",
    "tls_server_config.client_allowed_sans": "not supported by pushprox",
    "tls_server_config.curve_preferences": "not supported by pushprox (OpenSSL chooses "
                                           "the curves)",
    "rate_limit": "not supported by pushprox",
}
_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``: the listeners' certificate, client certificates, profile."""

    cert_file: str
    key_file: str
    #: Whether clients must present a certificate (True), may (False), or are not asked.
    client_certificate: bool | None = None
    client_ca_file: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    cipher_suites: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WebConfig:
    """What a web configuration file says."""

    tls: TLSServerConfig | None = None
    #: Response headers of the server's own endpoints.
    headers: tuple[tuple[str, str], ...] = ()
    #: Users and their bcrypt hashes; empty: no basic auth.
    users: Mapping[str, bytes] | None = None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where} is not a mapping")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    return value


def _check_fields(section: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    for name in section:
        path = f"{prefix}{name}"
        if path in _UNSUPPORTED:
            raise ValueError(f"{path}: {_UNSUPPORTED[path]}")
        if name not in known:
            raise ValueError(f"unknown field {path}")


def _tls(section: dict[str, Any], directory: str) -> TLSServerConfig | None:
    from pushprox.shared.tls import cipher_suites

    _check_fields(section, _TLS_FIELDS, "tls_server_config.")

    def path(name: str) -> str | None:
        value = section.get(name)
        if value in (None, ""):
            return None
        return os.path.join(directory, _string(value, f"tls_server_config.{name}"))

    cert, key = path("cert_file"), path("key_file")
    if cert is None and key is None:
        if section.get("client_ca_file") or section.get("client_auth_type"):
            raise ValueError("tls_server_config: client certificates need cert_file and "
                             "key_file")
        return None  # exporter-toolkit serves plain HTTP then
    if cert is None or key is None:
        raise ValueError(f"tls_server_config: missing {'key_file' if cert else 'cert_file'}")
    auth_type = _string(section.get("client_auth_type") or "NoClientCert",
                        "tls_server_config.client_auth_type")
    if auth_type not in CLIENT_AUTH_TYPES:
        raise ValueError(f"tls_server_config.client_auth_type {auth_type}: not one of "
                         f"{', '.join(CLIENT_AUTH_TYPES)} (the others verify nothing)")
    client_certificate = CLIENT_AUTH_TYPES[auth_type]
    client_ca = path("client_ca_file")
    if client_ca is not None and client_certificate is None:
        raise ValueError("tls_server_config: client_ca_file without a client_auth_type "
                         "that verifies (VerifyClientCertIfGiven, RequireAndVerifyClientCert)")
    if client_ca is None and client_certificate is not None:
        raise ValueError(f"tls_server_config.client_auth_type {auth_type} needs "
                         "client_ca_file")
    versions = {}
    for name in ("min_version", "max_version"):
        value = section.get(name)
        if value is None:
            continue
        value = _string(value, f"tls_server_config.{name}")
        if value not in _VERSIONS:
            raise ValueError(f"tls_server_config.{name} {value}: not one of "
                             f"{', '.join(_VERSIONS)}")
        if value in ("TLS10", "TLS11"):
            raise ValueError(f"tls_server_config.{name} {value}: pushprox offers TLS12 "
                             "and TLS13 only")
        versions[name] = value
    if versions.get("min_version") == "TLS13" and versions.get("max_version") == "TLS12":
        raise ValueError("tls_server_config: max_version TLS12 is below min_version TLS13")
    suites = section.get("cipher_suites")
    if suites is not None:
        if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
            raise ValueError("tls_server_config.cipher_suites is not a list of names")
        try:
            suites = cipher_suites(",".join(suites))
        except ValueError as error:
            raise ValueError(f"tls_server_config.cipher_suites: {error}") from None
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ValueError("tls_server_config.prefer_server_cipher_suites is not true or false")
    return TLSServerConfig(cert_file=cert, key_file=key, client_certificate=client_certificate,
                           client_ca_file=client_ca, min_version=versions.get("min_version"),
                           max_version=versions.get("max_version"), cipher_suites=suites)


def _headers(section: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    _check_fields(section, frozenset({"http2", "headers"}), "http_server_config.")
    if not isinstance(section.get("http2", True), bool):
        raise ValueError("http_server_config.http2 is not true or false")
    headers = []
    for name, value in _mapping(section.get("headers"), "http_server_config.headers").items():
        if name not in _HEADERS:
            raise ValueError(f"http_server_config.headers: {name} cannot be set (only "
                             f"{', '.join(_HEADERS)})")
        value = _string(value, f"http_server_config.headers.{name}")
        accepted = _HEADERS[name]
        if not value:
            continue  # "Unset if blank."
        if accepted is not None and value.lower() not in accepted:
            raise ValueError(f"http_server_config.headers.{name} {value}: not one of "
                             f"{', '.join(accepted)}")
        headers.append((name, value))
    return tuple(headers)


def _users(section: dict[str, Any]) -> dict[str, bytes]:
    users = {}
    for user, hashed in section.items():
        hashed = _string(hashed, f"basic_auth_users.{user}")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"basic_auth_users.{user}: not a bcrypt hash")
        users[user] = hashed.encode("ascii")
    return users


def parse_web_config(text: str, directory: str) -> WebConfig:
    """Parse a web configuration file's ``text``; file names are relative to ``directory``."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"not YAML{where}: {getattr(error, 'problem', None) or error}"
                         ) from None
    top = _mapping(document, "the file")
    _check_fields(top, frozenset({"tls_server_config", "http_server_config",
                                  "basic_auth_users"}), "")
    users = _users(_mapping(top.get("basic_auth_users"), "basic_auth_users"))
    return WebConfig(
        tls=_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), directory),
        headers=_headers(_mapping(top.get("http_server_config"), "http_server_config")),
        users=users or None,
    )


def load_web_config(path: str) -> WebConfig:
    """Read the web configuration file at ``path``; a ValueError names it and says why."""
    try:
        with open(path, encoding="utf-8") as web_file:
            text = web_file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"cannot read web configuration file {path}: {reason}") from None
    try:
        return parse_web_config(text, os.path.dirname(os.path.abspath(path)))
    except ValueError as error:
        raise ValueError(f"web configuration file {path}: {error}") from None
