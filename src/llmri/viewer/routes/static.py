"""``GET /`` and ``GET /static/{file}``: the web client, from an allow-list read once at start."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..state import NotFound
from . import State

router = APIRouter(include_in_schema=False)

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in viewer_web, read once: the static route can only ever serve these."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files("llmri") / "viewer_web"

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif child.is_file():
                ext = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
                if ext in TYPES:
                    out[name] = (child.read_bytes(), TYPES[ext] + ("; charset=utf-8" if ext != ".svg" else ""))

    if root.is_dir():
        walk(root, "")
    return out


def _file(state: State, name: str) -> Response:
    hit = state.static.get(name)
    if hit is None:
        raise NotFound("no such file")
    return Response(hit[0], media_type=hit[1])


@router.get("/")
def index(state: State) -> Response:
    if "index.html" not in state.static:
        return JSONResponse({"error": "the viewer's web client is not installed (viewer_web missing)"}, 500)
    return _file(state, "index.html")


@router.get("/static/{name:path}")
def static_file(state: State, name: str) -> Response:
    return _file(state, name)
