"""
``testssl`` (Debian package ``testssl.sh``) scans the TLS listener of a proxy with the
default profile: protocols, cipher categories, forward secrecy, the
server's choices and every vulnerability it knows; it finds nothing vulnerable or
obsolete.  The certificate itself (a test CA's, valid for a day) is not what is judged,
so its checks are left out.  A scan takes about a minute.

Without ``testssl`` the tests skip, and fail under ``PUSHPROX_REQUIRE_E2E=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import skip_or_fail
from tests.harness.processes import subprocess_env
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

TESTSSL = shutil.which("testssl") or "/usr/bin/testssl"
#: Severities of findings that are a problem (testssl also says OK, INFO and WARN, the
#: last one about itself, e.g. its OpenSSL lacking GOST).
BAD_SEVERITIES = {"LOW", "MEDIUM", "HIGH", "CRITICAL"}


@pytest.fixture
def testssl() -> str:
    """testssl, or a skip (a failure under PUSHPROX_REQUIRE_E2E=1)."""
    if not os.access(TESTSSL, os.X_OK):
        skip_or_fail(f"{TESTSSL} is missing (Debian package testssl.sh)")
    return TESTSSL


def scan(testssl: str, port: int, directory: Path) -> dict[str, dict[str, Any]]:
    """testssl's findings about 127.0.0.1:port, by id."""
    report = directory / "testssl.json"
    argv = [testssl, "--quiet", "--color", "0", "--warnings", "batch", "--protocols",
            "--std", "--fs", "--server-preference", "--vulnerable",
            "--jsonfile", str(report), f"127.0.0.1:{port}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env=subprocess_env(), check=False)
    assert report.exists(), done.stdout + done.stderr
    return {finding["id"]: finding for finding in json.loads(report.read_text())}


def assert_intermediate_profile(findings: dict[str, dict[str, Any]]) -> None:
    """TLS 1.2 and 1.3 only, strong ciphers only, nothing vulnerable."""
    bad = {name: (f["severity"], f["finding"]) for name, f in findings.items()
           if f["severity"] in BAD_SEVERITIES}
    assert bad == {}
    offered = {name: findings[name]["finding"]
               for name in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")}
    assert offered == {"SSLv2": "not offered", "SSLv3": "not offered",
                       "TLS1": "not offered", "TLS1_1": "not offered",
                       "TLS1_2": "offered", "TLS1_3": "offered with final"}
    # The obsolete CBC suites testssl counts as "average" (LUCKY13's prey) are gone.
    categories = {name: f["finding"] for name, f in findings.items()
                  if name.startswith("cipherlist_")}
    assert categories == {
        "cipherlist_NULL": "not offered", "cipherlist_aNULL": "not offered",
        "cipherlist_EXPORT": "not offered", "cipherlist_LOW": "not offered",
        "cipherlist_3DES_IDEA": "not offered", "cipherlist_AVERAGE": "not offered",
        "cipherlist_STRONG": "offered"}
    assert findings["LUCKY13"]["finding"] == "not vulnerable"


def test_proxy_listener_passes_testssl(stack: Stack, testssl: str) -> None:
    """The proxy's ssl: listener offers Mozilla's intermediate profile and nothing else."""
    ca = stack.certificate_authority()
    proxy = stack.proxy(certificate=ca.issue("proxy", ["127.0.0.1", "localhost"],
                                             client=False), trust=ca.cert_path)
    assert_intermediate_profile(scan(testssl, proxy.port, stack.directory("testssl")))
    assert proxy.healthy()
