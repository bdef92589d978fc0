# -*- test-case-name: tests.test_taps -*-
"""Parsers of option values shared by both twistd plugins (no imports of either side)."""

from __future__ import annotations

from twisted.python import usage


def positive_float(value: str) -> float:
    """Parse a positive number of seconds."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value} is not a positive number")
    return number


def positive_int(value: str) -> int:
    """Parse a positive integer."""
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


def port_number(value: str) -> int:
    """Parse a TCP port number."""
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError(f"{value} is not a TCP port")
    return number


def read_secret(path: str | None, flag: str) -> str | None:
    """The first line of a secret file, or a usage error naming the flag."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as secret_file:
            secret = secret_file.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise usage.UsageError(f"--{flag}: cannot read {path}: {error}") from None
    if not secret:
        raise usage.UsageError(f"--{flag}: {path} is empty")
    return secret
