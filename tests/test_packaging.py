"""
What users install is what the tests prove: the wheel holds every module of the tree
(found by package discovery, not a hand-kept list), the tests import that install when
CI says so, and every program reports the version ``pyproject.toml`` gives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from pushprox.shared.metrics import ClientMetrics, ProxyMetrics
from pushprox.shared.version import package_version, version_line
from tests.conftest import installed_package_problem
from tests.harness.packaging import (
    SDIST_VARIABLE,
    code_lines,
    pyproject_version,
    sdist_names,
    tree_files,
    wheel,
    wheel_names,
    wheel_record,
)
from tests.harness.processes import SOURCE_ROOT, from_the_tree, subprocess_env, twistd_command

#: They build the wheel and run the installed programs.
pytestmark = pytest.mark.processes

def test_the_wheel_holds_every_file_of_the_tree_and_nothing_else() -> None:
    """pushprox/ (every subpackage) and the twistd plugin file, all of them, no more."""
    shipped = {name for name in wheel_names(wheel()) if ".dist-info/" not in name}
    assert "pushprox/proxy/cluster/service.py" in shipped
    assert shipped == tree_files(), (
        f"missing from the wheel: {sorted(tree_files() - shipped)}; "
        f"in the wheel but not the tree: {sorted(shipped - tree_files())}")


def test_the_wheel_leaves_twisted_plugins_a_namespace() -> None:
    """No ``twisted/__init__.py`` nor ``twisted/plugins/__init__.py``: they would hide Twisted."""
    names = wheel_names(wheel())
    assert "twisted/plugins/pushprox_plugins.py" in names
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names


def test_the_wheel_metadata_names_the_version_and_both_commands() -> None:
    """The wheel's version is pyproject.toml's, and it installs both console scripts."""
    path = wheel()
    assert path.name.startswith(f"pushprox-{pyproject_version()}-py3-none-any"), path.name
    with __import__("zipfile").ZipFile(path) as archive:
        entry_points = next(archive.read(name).decode() for name in archive.namelist()
                            if name.endswith(".dist-info/entry_points.txt"))
    assert "pushprox-proxy = pushprox.commands:proxy" in entry_points
    assert "pushprox-client = pushprox.commands:client" in entry_points


def test_the_source_distribution_builds_the_same_tree() -> None:
    """The sdist CI built holds every shipped file, the tests, the licence and changelog."""
    named = os.environ.get(SDIST_VARIABLE)
    if not named:
        pytest.skip(f"{SDIST_VARIABLE} names no source distribution (CI builds one)")
    names = sdist_names(Path(named))
    missing = (tree_files() | {"pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE",
                               "tests/conftest.py", "tests/harness/processes.py"}) - names
    assert not missing, f"missing from the source distribution: {sorted(missing)}"


def test_the_tests_import_the_installed_wheel_when_ci_says_so() -> None:
    """Under ``PUSHPROX_TEST_INSTALLED=1`` the pushprox imported is the wheel, file for file."""
    if from_the_tree():
        assert installed_package_problem() is not None
        pytest.skip("the tests import the checkout's tree (PUSHPROX_TEST_INSTALLED unset)")
    assert installed_package_problem() is None
    installed = distribution("pushprox")
    direct_url = json.loads(installed.read_text("direct_url.json") or "{}")
    assert "archive_info" in direct_url, direct_url
    expected = code_lines(wheel_record(wheel()))
    assert len(expected) == len(tree_files())
    assert code_lines(installed.read_text("RECORD") or "") == expected


def run_program(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one of our programs to its end, from outside the checkout."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env=subprocess_env(), cwd="/")


@pytest.mark.parametrize("program", ["pushprox-proxy", "pushprox-client"])
def test_version_of_the_commands_and_the_twistd_plugins(program: str) -> None:
    """``--version`` of the console script and of the twistd plugin: pushprox's version."""
    assert package_version() == pyproject_version()
    script = str(Path(sys.executable).with_name(program))
    for argv in ([sys.executable, script, "--version"],
                 [*twistd_command(), program, "--version"]):
        done = run_program(argv)
        assert (done.returncode, done.stdout, done.stderr) == (
            0, version_line(program) + "\n", ""), argv
        assert re.fullmatch(rf"{program}, version {re.escape(pyproject_version())} "
                            r"\(Python [\d.]+\S*, Twisted [\w.]+\)\n", done.stdout)


def test_the_version_is_read_as_importlib_metadata_reads_it(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The version read from the metadata file is the one ``importlib.metadata`` gives;
    the first ``sys.path`` directory holding pushprox's metadata wins, in either form, and
    without any it is ``unknown``."""
    assert package_version() == distribution("pushprox").version
    find = package_version.__wrapped__
    wheel_form, egg_form, empty = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    (wheel_form / "pushprox-9.8.7.dist-info").mkdir(parents=True)
    (wheel_form / "pushprox-9.8.7.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pushprox\nVersion: 9.8.7\n\nVersion: 0\n")
    (egg_form / "pushprox.egg-info").mkdir(parents=True)
    (egg_form / "pushprox.egg-info" / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: pushprox\nVersion: 1.2.3.dev4\n")
    empty.mkdir()
    monkeypatch.setattr(sys, "path", [str(empty), str(wheel_form), str(egg_form)])
    assert find() == "9.8.7"
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(egg_form)])
    assert find() == "1.2.3.dev4"
    monkeypatch.setattr(sys, "path", [str(empty)])
    assert find() == "unknown"


def test_build_info_says_the_same_version_in_both_programs() -> None:
    """``pushprox_build_info`` of the proxy and of the client: 1, labelled with the version."""
    for metrics in (ProxyMetrics(), ClientMetrics()):
        text = generate_latest(metrics.registry).decode()
        found = re.search(r'^pushprox_build_info\{([^}]*)\} 1\.0$', text, re.MULTILINE)
        assert found is not None, text
        assert f'version="{pyproject_version()}"' in found.group(1).split(",")


def test_the_changelog_has_a_section_for_this_version() -> None:
    """CHANGELOG.md (Keep a Changelog) says what this version added."""
    changelog = (SOURCE_ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(pyproject_version())}\] - \d{{4}}-\d\d-\d\d$",
                     changelog, re.MULTILINE), "no section for this version"


def test_twistd_finds_each_plugin_once_from_the_package_under_test() -> None:
    """
    Twisted's plugin discovery (and its dropin.cache) sees one ``pushprox-proxy`` and one
    ``pushprox-client``, from the plugin file beside the pushprox under test: a checkout on
    the path must not add a second copy, nor shadow the installed one.
    """
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import twisted.plugins.pushprox_plugins as plugin_file
    from tests.harness.processes import PACKAGE_ROOT

    names = sorted(maker.tapname for maker in getPlugins(IServiceMaker)
                   if maker.tapname.startswith("pushprox"))
    assert names == ["pushprox-client", "pushprox-proxy"]
    assert Path(plugin_file.__file__).resolve() == (
        PACKAGE_ROOT / "twisted" / "plugins" / "pushprox_plugins.py")
