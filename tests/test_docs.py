"""
The README and the documentation site hold what users paste and read: the README stays a
front door (at most 400 lines, every flag named), every shell block is run by a test or
marked as an example that cannot run here, every YAML and JSON block parses, every link
leads somewhere, and the MkDocs site builds in strict mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pushprox.client import tap as client_tap
from pushprox.proxy import tap as proxy_tap
from tests.harness.processes import SOURCE_ROOT

README = SOURCE_ROOT / "README.md"
DOCS = SOURCE_ROOT / "docs"
#: The README's length, beyond which it stops being a front door.
README_MAX_LINES = 400
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
#: ``<!-- NAME: tests/FILE.py runs this block as written -->``: FILE holds this marker.
RUNS = re.compile(r"<!-- [^:]+: (tests/\S+\.py) runs this block as written -->")
#: ``<!-- example, not run here: REASON -->``.
EXAMPLE = re.compile(r"<!-- example, not run here: \S.* -->")


@dataclass(frozen=True)
class Block:
    """A fenced block of a Markdown file."""

    path: Path
    line: int
    language: str
    marker: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(SOURCE_ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    """The README and every page of the documentation site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with the line just above it."""
    lines = path.read_text().split("\n")
    blocks: list[Block] = []
    opening: int | None = None
    for number, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if opening is None:
            opening = number
        else:
            language = lines[opening][3:].strip()
            marker = lines[opening - 1] if opening else ""
            blocks.append(Block(path, opening + 1, language, marker,
                                "\n".join(lines[opening + 1:number])))
            opening = None
    assert opening is None, f"{path}: a block opened at line {opening + 1} never closes"
    return blocks


ALL_BLOCKS = [block for path in markdown_files() for block in fenced_blocks(path)]


def test_the_readme_is_a_front_door() -> None:
    """At most 400 lines, with the quick start, a Prometheus job, and links to the guide."""
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for needed in ("## A first scrape", "proxy_url:", "docs/security.md", "docs/index.md"):
        assert needed in text, needed


@pytest.mark.parametrize("options", [proxy_tap.Options, client_tap.Options])
def test_the_readme_names_every_flag(options: type) -> None:
    """Each long option of both programs appears in the README as ``--name``."""
    text = README.read_text()
    flags = {name.rstrip("=") for name in options().longOpt} - {"help"}
    missing = sorted(flag for flag in flags if f"`--{flag}" not in text)
    assert not missing, f"the README does not name {missing}"


def test_every_block_says_its_language() -> None:
    """A block without one is neither highlighted nor checked."""
    bare = [str(block) for block in ALL_BLOCKS if not block.language]
    assert not bare, f"blocks without a language: {bare}"


def test_every_shell_block_is_run_by_a_test_or_marked_as_an_example() -> None:
    """What a user pastes either works, as a test shows, or says why it cannot run here."""
    unmarked, unknown = [], []
    for block in ALL_BLOCKS:
        if block.language not in SHELL_LANGUAGES:
            continue
        runs = RUNS.fullmatch(block.marker)
        if runs is None and not EXAMPLE.fullmatch(block.marker):
            unmarked.append(str(block))
        elif runs is not None:
            test = SOURCE_ROOT / runs.group(1)
            if not test.exists() or block.marker not in test.read_text():
                unknown.append(f"{block}: {runs.group(1)} does not run it")
    assert not unmarked, f"shell blocks neither run by a test nor marked: {unmarked}"
    assert not unknown, unknown


def test_a_block_run_by_a_test_is_the_same_wherever_it_appears() -> None:
    """The quick start of the README and of the guide cannot drift apart."""
    by_marker: dict[str, set[str]] = {}
    for block in ALL_BLOCKS:
        if RUNS.fullmatch(block.marker):
            by_marker.setdefault(block.marker, set()).add(block.text)
    assert by_marker
    drifted = [marker for marker, texts in by_marker.items() if len(texts) > 1]
    assert not drifted, drifted


def test_every_yaml_and_json_block_parses() -> None:
    """Configuration users copy is at least well-formed."""
    checked = 0
    for block in ALL_BLOCKS:
        if block.language in ("yaml", "yml"):
            documents = [d for d in yaml.safe_load_all(block.text) if d is not None]
            assert documents, f"{block}: an empty YAML block"
            checked += 1
        elif block.language == "json":
            json.loads(block.text)
            checked += 1
    assert checked >= 5


def test_every_relative_link_of_the_readme_leads_to_a_file() -> None:
    """The README's links into the checkout (docs/, CHANGELOG.md, LICENSE) exist."""
    text = README.read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert links
    missing = sorted({link for link in links if not (SOURCE_ROOT / link).exists()})
    assert not missing, missing
    anchors = set(re.findall(r"\]\(#([^)]+)\)", text))
    headings = {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-")
                for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    assert anchors <= headings, sorted(anchors - headings)


@pytest.mark.processes
def test_the_documentation_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no broken link, no page left out of the navigation."""
    if not (importlib.util.find_spec("mkdocs") and importlib.util.find_spec("material")):
        if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
            pytest.fail("mkdocs and mkdocs-material are not installed (pip install '.[docs]')")
        pytest.skip("mkdocs and mkdocs-material are not installed (pip install '.[docs]')")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(SOURCE_ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "dev" / "design" / "index.html").exists()
