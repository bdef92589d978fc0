# -*- test-case-name: tests.test_taps -*-
"""Parsers of option values shared by both twistd plugins (no imports of either side)."""

from __future__ import annotations


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
