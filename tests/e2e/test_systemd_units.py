"""
The systemd units of ``deploy/systemd``: ``systemd-analyze verify`` finds nothing to say
about them, their sandbox rates as "OK" in ``systemd-analyze security``, and the command
each starts, with the environment it gives and its example ``/etc/default`` file, serves:
the client registers with the proxy.

Needs ``systemd-analyze`` (Debian package ``systemd``); without it the tests skip, and fail
under ``PUSHPROX_REQUIRE_E2E=1``. No systemd need be running.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import skip_or_fail
from tests.harness.processes import SOURCE_ROOT, Process, twistd_command
from tests.harness.rawhttp import http_get
from tests.harness.stack import STARTUP_TIMEOUT, Stack
from tests.harness.waiting import free_port, wait_for

pytestmark = pytest.mark.e2e

UNITS = SOURCE_ROOT / "deploy" / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
#: Where the units expect pushprox's virtualenv (the README's installation).
INSTALLED_TWISTD = "/opt/pushprox/bin/twistd"


@pytest.fixture
def systemd_analyze() -> str:
    """systemd-analyze, or a skip (a failure under PUSHPROX_REQUIRE_E2E=1)."""
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        reason = f"{SYSTEMD_ANALYZE} is missing (Debian package systemd)"
        skip_or_fail(reason)
    return SYSTEMD_ANALYZE


def installed_copies(directory: Path) -> list[Path]:
    """
    The units with their twistd where this test's is: ``verify`` checks that the command
    exists, and the README installs it in /opt/pushprox, which this machine need not have.
    """
    twistd = twistd_command()[-1]
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert INSTALLED_TWISTD in text, unit
        copy = directory / unit.name
        copy.write_text(text.replace(INSTALLED_TWISTD, twistd))
        copies.append(copy)
    assert [c.name for c in copies] == ["pushprox-client.service", "pushprox-proxy.service"]
    return copies


def test_units_pass_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path) -> None:
    """Not a warning: an unknown or misspelt directive would be one (and exit 0)."""
    done = subprocess.run([systemd_analyze, "verify", *map(str, installed_copies(tmp_path))],
                          capture_output=True, text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done


def test_units_sandbox_rates_ok(systemd_analyze: str, tmp_path: Path) -> None:
    """``systemd-analyze security``: each unit's exposure is below 2 of 10 ("OK")."""
    for unit in installed_copies(tmp_path):
        done = subprocess.run(
            [systemd_analyze, "security", "--offline=yes", "--no-pager", str(unit)],
            capture_output=True, text=True, check=False, timeout=60)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
        assert found is not None, done
        assert float(found.group(1)) < 2.0 and found.group(2) == "OK", found.group(0)


def unit_command(unit: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart (twistd of this test) and its Environment= and example file."""
    text = unit.read_text()
    [exec_start] = re.findall(r"^ExecStart=(.+)$", text, re.MULTILINE)
    argv = exec_start.split()
    assert argv[0] == INSTALLED_TWISTD, argv
    environment = dict(line.split("=", 1) for line in
                       re.findall(r"^Environment=(.+)$", text, re.MULTILINE))
    [environment_file] = re.findall(r"^EnvironmentFile=-(.+)$", text, re.MULTILINE)
    example = UNITS / (Path(environment_file).name + ".default")
    for line in example.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environment[key] = value
    return [*twistd_command(), *argv[1:]], environment


def said_sighup(process: Process) -> bool:
    """Whether ``process`` has logged a reload on SIGHUP."""
    return "SIGHUP: " in process.log_text()


def test_unit_commands_serve_with_their_environment(stack: Stack, tmp_path: Path) -> None:
    """The proxy's and client's ExecStart, with the example files: the client registers."""
    proxy_argv, proxy_env = unit_command(UNITS / "pushprox-proxy.service")
    client_argv, client_env = unit_command(UNITS / "pushprox-client.service")
    assert proxy_env["PUSHPROX_LOG_FORMAT"] == "logfmt"
    assert client_env["PUSHPROX_FQDN"] == "node1.example"
    port = free_port()
    # Only the addresses change: this machine's ports are not the examples'.
    proxy_env["PUSHPROX_LISTEN"] = f"tcp:{port}:interface=127.0.0.1"
    client_env["PUSHPROX_PROXY_URL"] = f"http://127.0.0.1:{port}/"
    client_env["PUSHPROX_METRICS_LISTEN"] = ""
    proxy = stack.start("proxy", proxy_argv, env=proxy_env)
    client = stack.start("client", client_argv, env=client_env)
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/clients").json()[0]["targets"],
             timeout=STARTUP_TIMEOUT, what="node1.example in /clients", watch=[proxy, client])
    assert http_get(f"http://127.0.0.1:{port}/clients").json()[0]["targets"] == [
        "node1.example"]
    assert "level=info" in client.log_text(), client.log_text()
    # systemctl reload runs ExecReload: both programs reload and keep running.
    for unit, process in (("pushprox-proxy", proxy), ("pushprox-client", client)):
        [exec_reload] = re.findall(r"^ExecReload=(.+)$",
                                   (UNITS / f"{unit}.service").read_text(), re.MULTILINE)
        argv = exec_reload.replace("$MAINPID", str(process.pid)).split()
        subprocess.run(argv, check=True, timeout=30)
        wait_for(functools.partial(said_sighup, process), timeout=STARTUP_TIMEOUT,
                 what=f"{unit} reloading on ExecReload", watch=[process])
        assert process.alive, process.log_text()
