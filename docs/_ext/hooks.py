"""mkdocs hooks: the repository's README is the site's index, and DEVELOPERS.md one of its pages.

Both files stay where GitHub and a fresh clone show them (the repository root); the site reads them
at build time, with the README's links into ``docs/`` made relative to the site's pages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# (site page, file at the repository root)
FROM_ROOT = {"index.md": "README.md", "DEVELOPERS.md": "DEVELOPERS.md"}
LINK_RE = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")


def _on_site(target: str) -> bool:
    """Whether a link from a root file still leads somewhere on the site: the web, an anchor, a page.
    Other repository paths (``examples/``) keep their text and lose the link."""
    path = target.split("#", 1)[0]
    return not path or "://" in target or path in FROM_ROOT.values() or (ROOT / "docs" / path).is_file()


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for page, source in FROM_ROOT.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        text = re.sub(r"\]\(docs/", "](", text)  # docs/FORMAT.md is FORMAT.md here
        text = LINK_RE.sub(lambda m: m[0] if _on_site(m["target"]) else m["text"], text)
        files.append(File.generated(config, page, content=text))
    return files
