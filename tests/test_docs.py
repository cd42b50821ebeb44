"""The documentation site builds with ``mkdocs build --strict``, and strict means strict: a broken
cross-reference, in a page or in a docstring, fails the build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: pip install 'llmri[docs]'")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each build reads the whole package with griffe: several seconds


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # from the root: mkdocs.yml names its hooks and griffe extension by paths relative to it
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of_repo(tmp_path: Path) -> Path:
    """What the site is built from, copied: mkdocs.yml, the root pages, docs/ and src/."""
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("docs", "src"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    for name in ("mkdocs.yml", "README.md", "DEVELOPERS.md"):
        shutil.copy2(ROOT / name, root / name)
    return root


def test_site_builds_strictly(tmp_path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    api = tmp_path / "site" / "api" / "llmri" / "index.html"
    html = api.read_text(encoding="utf-8")
    # the public face, with a Sphinx role in a docstring turned into a link
    assert 'id="llmri.Session"' in html and 'id="llmri.capture.stream.capture"' in html
    assert 'class="autorefs autorefs-internal"' in html


def test_a_broken_link_in_a_page_fails_the_build(tmp_path):
    root = copy_of_repo(tmp_path)
    page = root / "docs" / "precision.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the frame][llmri.frame.NoSuchFrame].\n")
    done = build(root, tmp_path / "site")
    assert done.returncode != 0
    assert "llmri.frame.NoSuchFrame" in done.stdout + done.stderr


def test_a_sphinx_role_naming_nothing_fails_the_build(tmp_path):
    root = copy_of_repo(tmp_path)
    module = root / "src" / "llmri" / "frame.py"
    text = module.read_text(encoding="utf-8")
    first_docstring_end = text.index('"""', 3)
    module.write_text(
        text[:first_docstring_end] + "\nSee :class:`~llmri.frame.NoSuchFrame`.\n" + text[first_docstring_end:],
        encoding="utf-8",
    )
    done = build(root, tmp_path / "site")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "llmri.frame.NoSuchFrame" in out and "names nothing" in out
