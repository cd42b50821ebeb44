"""``llmri export STORE SESSION --format npz|png|gif|mp4|json -o OUT [--against baseline|ID]``."""

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
    p.add_argument(
        "--against",
        default=None,
        metavar="ID",
        help="draw SESSION beside another session of the store and their difference (gif, mp4, png): a session id, "
        "or 'baseline' for the session SESSION was re-run or steered from",
    )
    return p


def run(args: argparse.Namespace) -> int:
    import llmri

    from ..render.export import export
    from .info import pick_session

    store = llmri.open_store(args.store)
    session = pick_session(store, args.session)
    if args.against is not None:
        return _pair(store, session, args)
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


def _pair(store, session, args: argparse.Namespace) -> int:
    from .._errors import StoreError
    from ..render.pair import export_pair
    from .info import pick_session

    other = args.against
    if other == "baseline":
        other = session.meta.get("baseline")
        if not other:
            raise StoreError(f"session {session.id} has no baseline (it was not made by rerun, steering or patching)")
    base = pick_session(store, other)
    paths = export_pair(
        base, session, args.format, args.output, signal=args.signal, cmap=args.cmap, pixel=args.pixel,
        frame=args.frame, fps=args.fps, force=args.force,
    )  # fmt: skip
    print(paths[0] if len(paths) == 1 else f"{len(paths)} frames in {args.output}")
    return 0
