"""Tests for ``pushprox.client.names``: the names a client registers and their addresses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushprox.client.names import ClientName, check_unique, parse_client_name


class ParseClientNameTests(SynchronousTestCase):
    """``NAME`` and ``NAME=ADDRESS``."""

    def test_name_and_address(self) -> None:
        """An IP address (v4 or v6) or a host name after ``=``; spaces around are dropped."""
        self.assertEqual(parse_client_name("node1.example"), ClientName("node1.example"))
        self.assertEqual(parse_client_name(" db.example = 10.0.0.2 "),
                         ClientName("db.example", "10.0.0.2"))
        self.assertEqual(parse_client_name("v6.example=::1"), ClientName("v6.example", "::1"))
        self.assertEqual(parse_client_name("a.example=b.internal"),
                         ClientName("a.example", "b.internal"))
        self.assertEqual(str(ClientName("a.example", "10.0.0.2")), "a.example=10.0.0.2")

    def test_bad_names_and_addresses(self) -> None:
        """Each refusal says what is wrong."""
        for value, reason in (
            ("", "the name is empty"),
            ("=10.0.0.2", "the name is empty"),
            ("node 1", "not a host name (letters, digits, '-', '_' and dots)"),
            ("a.example=", "the address  is not an IP address or a host name"),
            ("a.example=10.0.0.2:9100", "the address 10.0.0.2:9100 is not an IP address or "
             "a host name"),
        ):
            with self.assertRaises(ValueError) as raised:
                parse_client_name(value)
            self.assertEqual(str(raised.exception), reason, value)

    def test_names_are_unique_in_any_case(self) -> None:
        """The proxy matches names without case: two spellings are one client."""
        check_unique([ClientName("a.example"), ClientName("b.example")])
        with self.assertRaises(ValueError) as raised:
            check_unique([ClientName("a.example"), ClientName("A.Example", "10.0.0.2")])
        self.assertEqual(str(raised.exception), "A.Example is given twice")
