"""``llmri export STORE SESSION --format npz|png|gif|mp4|json -o OUT``."""

from __future__ import annotations

import argparse

from ..render.colormaps import COLORMAPS, DEFAULT_COLORMAP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..render.export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a session as npz, png, gif, mp4 or json",
        description="Export one session: npz (every array), png (one frame with --frame, else every frame into "
        "the directory OUT), gif / mp4 (the whole session, current token under each frame), json (tokens, meta).",
    )
    p.add_argument("store", help="store path or URL")
    p.add_argument("session", help="session id (or 'latest')")
    p.add_argument("--format", "-f", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--signal", default=None, help="signal to draw (default: the session's first)")
    p.add_argument("--cmap", default=DEFAULT_COLORMAP, help=f"colour map: {', '.join(COLORMAPS)}")
    p.add_argument("--pixel", type=int, default=4, help="pixels per tile value (default 4)")
    p.add_argument("--frame", type=int, default=None, help="png: only this frame (negative counts from the end)")
    p.add_argument("--fps", type=float, default=8.0, help="gif/mp4 frames per second (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    return p


def run(args: argparse.Namespace) -> int:
    import llmri

    from ..render.export import export
    from .info import pick_session

    store = llmri.open_store(args.store)
    session = pick_session(store, args.session)
    paths = export(
        session,
        args.format,
        args.output,
        signal=args.signal,
        cmap=args.cmap,
        pixel=args.pixel,
        frame=args.frame,
        fps=args.fps,
        force=args.force,
    )
    if len(paths) == 1:
        print(paths[0])
    else:
        print(f"{len(paths)} frames in {args.output}")
    return 0
