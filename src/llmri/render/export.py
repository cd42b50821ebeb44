"""Exporters: a session to npz (every array), PNG (one or all frames), GIF / MP4 ("fMRI video",
the current token written under the frame) and JSON (tokens and metadata).

Images use the same layout and colour maps as the viewer (:mod:`llmri.render`,
:mod:`llmri.render.colormaps`). Pillow writes PNG and GIF, imageio with imageio-ffmpeg writes MP4
(``pip install 'llmri[export]'``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import LlmriError, StoreError, require
from .._jsonsafe import json_safe
from ..store import SessionReader
from .colormaps import COLORMAPS
from .grid import fallback_scales, render_frame, session_scales

FORMATS = ("npz", "png", "gif", "mp4", "json")
#: Frames read from the store at a time while rendering a video.
_BATCH = 64
CAPTION_BACKGROUND = (0, 0, 0)
CAPTION_COLOR = (235, 235, 235)


class ExportError(LlmriError):
    """An export could not be written (bad options, output exists, missing encoder)."""


def readout_arrays(session: SessionReader) -> dict[str, dict[str, np.ndarray]]:
    """``{"lens": {field: array}, "attention": {...}}`` of the readouts the session holds."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if "lens" in session.readouts:
        out["lens"] = session.lens().arrays()
    if "attention" in session.readouts:
        out["attention"] = session.attention().arrays()
    return out


def session_json(session: SessionReader) -> dict[str, Any]:
    """``{"meta", "n_tokens", "text", "tokens": [...]}``, and where the session holds them
    ``"lens"`` / ``"attention"``: ``{"layers", <field>: nested lists [T, ...]}``; NaN becomes ``null``."""
    doc: dict[str, Any] = {
        "meta": session.meta,
        "n_tokens": len(session),
        "text": session.text,
        "tokens": session.tokens.to_records(),
    }
    for kind, arrays in readout_arrays(session).items():
        doc[kind] = {"layers": session.layers, **arrays}
    return json_safe(doc)


def export_json(session: SessionReader, out: Path) -> Path:
    out.write_text(json.dumps(session_json(session), ensure_ascii=False, indent=1, allow_nan=False), encoding="utf-8")
    return out


def export_npz(session: SessionReader, out: Path) -> Path:
    """Every array of the session, plus ``meta_json`` (the metadata as a JSON string).

    Keys: ``frames_<signal>`` ``[T, L, H, W]`` (float16; float32 for ``bfloat16`` / ``float32`` sessions),
    ``norm_<signal>`` and ``sparsity_<signal>``
    ``[T, L]`` float32, ``token_ids``, ``token_text``, ``token_role``, ``logprob``, ``entropy``,
    ``top_ids`` ``[T, k]``, ``top_probs`` ``[T, k]``, ``reducer_state_<name>``, and where the
    session holds them ``lens_<field>`` (``top_ids``, ``top_probs``, ``top_text`` ``[T, L, k]``, ``next_prob``,
    ``next_rank``, ``entropy`` ``[T, L]``) and ``attention_<field>`` (``top_pos``, ``top_weight``
    ``[T, L, H, k]``, ``entropy``, ``sink`` ``[T, L, H]``). Loads with ``np.load(path)`` (no pickles).
    """
    t = session.tokens
    arrays: dict[str, np.ndarray] = {
        "token_ids": t.ids,
        "token_text": np.array(t.text, dtype=str),
        "token_role": np.array(t.role, dtype=str),
        "logprob": t.logprob,
        "entropy": t.entropy,
        "top_ids": t.top_ids,
        "top_probs": t.top_probs,
        "meta_json": np.array(json.dumps(json_safe(session.meta), allow_nan=False)),
    }
    for s in session.signals:
        arrays[f"frames_{s}"] = session.frames(s)
        norm, sparsity = session.stats(s)
        arrays[f"norm_{s}"] = norm
        arrays[f"sparsity_{s}"] = sparsity
    for k, v in session.reducer_state.items():
        arrays[f"reducer_state_{k}"] = np.asarray(v)
    for kind, fields in readout_arrays(session).items():
        # texts (lens top_text) as numpy strings: an object array would need a pickle to load
        arrays.update({f"{kind}_{name}": a.astype(str) if a.dtype == object else a for name, a in fields.items()})
    with open(out, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
    return out


def caption(token: Any, n: int) -> str:
    """The line written under a frame: position, role and the token's text (escaped)."""
    text = json.dumps(token.text, ensure_ascii=False)[1:-1]
    return f"{token.index + 1}/{n}  {token.role}  \u201c{text}\u201d"


class FrameRenderer:
    """Renders a session's frames of one signal, with a caption strip under each frame."""

    def __init__(self, session: SessionReader, signal: str | None, cmap: str, pixel: int, caption: bool = True) -> None:
        if not session.signals:
            raise ExportError(f"session {session.id} is chat-only: it has no frames to draw")
        signal = signal or session.signals[0]
        if signal not in session.signals:
            have = ", ".join(session.signals)
            raise StoreError(f"session {session.id}: no signal {signal!r} (this session has: {have})")
        if cmap not in COLORMAPS:
            raise ExportError(f"unknown colour map {cmap!r} (choose from {', '.join(COLORMAPS)})")
        if pixel < 1 or pixel > 64:
            raise ExportError(f"pixel must be between 1 and 64, got {pixel}")
        self.session, self.signal, self.cmap, self.pixel = session, signal, cmap, pixel
        self.scales = session_scales(session.meta, signal)
        if self.scales is None and len(session):
            # one set of scales for the whole export, so colours do not flicker from frame to frame
            self.scales = list(fallback_scales(session.frames(signal, 0, min(len(session), 512))))
        self.caption = caption
        self.tokens = session.tokens
        self.label = f"session {session.id}"
        self._font: Any = None

    def __len__(self) -> int:
        return len(self.session)

    def _font_obj(self) -> Any:
        if self._font is None:
            from PIL import ImageFont

            self._font = ImageFont.load_default(size=12)
        return self._font

    def image(self, index: int, tiles: np.ndarray | None = None) -> np.ndarray:
        """Frame ``index`` as ``uint8[height, width, 3]`` (caption strip included)."""
        if tiles is None:
            tiles = self.session.frames(self.signal, index, index + 1)[0]
        rgb = render_frame(tiles, self.scales, self.cmap, pixel=self.pixel)
        if not self.caption:
            return rgb
        from PIL import Image, ImageDraw

        h, w, _ = rgb.shape
        strip = 18
        img = Image.new("RGB", (w, h + strip), CAPTION_BACKGROUND)
        img.paste(Image.fromarray(rgb), (0, 0))
        draw = ImageDraw.Draw(img)
        draw.text((3, h + 3), caption(self.tokens[index], len(self.session)), fill=CAPTION_COLOR, font=self._font_obj())
        return np.asarray(img)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = len(self.session)
        for a in range(0, n, _BATCH):
            block = self.session.frames(self.signal, a, min(n, a + _BATCH))
            for j in range(len(block)):
                yield self.image(a + j, block[j])


def _check_frame(renderer: Any, frame: int) -> int:
    n = len(renderer)
    i = frame + n if frame < 0 else frame
    if not 0 <= i < n:
        raise ExportError(f"{renderer.label} has {n} frames: no frame {frame}")
    return i


def export_png(renderer: Any, out: Path, frame: int | None = None) -> list[Path]:
    """One frame to ``out`` (a file), or, with ``frame=None``, every frame into directory ``out``
    as ``frame_00000.png``..."""
    from PIL import Image

    if frame is not None:
        i = _check_frame(renderer, frame)
        Image.fromarray(renderer.image(i)).save(out, format="PNG")
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(renderer):
        p = out / f"frame_{i:05d}.png"
        Image.fromarray(img).save(p, format="PNG")
        paths.append(p)
    return paths


def export_gif(renderer: Any, out: Path, fps: float = 8.0) -> Path:
    """``renderer``: a :class:`FrameRenderer` or anything with ``len``, ``label`` and frames to iterate."""
    from PIL import Image

    if not len(renderer):
        raise ExportError(f"{renderer.label} has no frames")
    frames = (Image.fromarray(img) for img in renderer)
    first = next(frames)
    first.save(out, format="GIF", save_all=True, append_images=frames, duration=int(round(1000 / fps)), loop=0)
    return out


def export_mp4(renderer: Any, out: Path, fps: float = 8.0) -> Path:
    """H.264 MP4 (yuv420p, so it plays everywhere); frames are padded to a multiple of 16 pixels."""
    imageio = require("imageio.v2", "export")
    require("imageio_ffmpeg", "export")
    if not len(renderer):
        raise ExportError(f"{renderer.label} has no frames")
    writer = imageio.get_writer(
        str(out), format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
    )
    try:
        for img in renderer:
            h, w, _ = img.shape
            ph, pw = -h % 16, -w % 16
            if ph or pw:
                img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            writer.append_data(img)
    finally:
        writer.close()
    return out


def check_output(out: str | os.PathLike[str], fmt: str, fps: float, force: bool) -> Path:
    """``out`` as a path, refused if it exists (unless ``force``) or its directory does not; the image
    formats' encoder present and ``fps`` sane."""
    path = Path(out)
    if path.exists() and not force:
        raise ExportError(f"{path} exists (use --force to overwrite)")
    if not path.parent.exists():
        raise ExportError(f"{path.parent}: no such directory")
    if fmt in ("png", "gif"):
        require("PIL", "export")
    if fmt in ("gif", "mp4") and not (math.isfinite(fps) and 0 < fps <= 120):
        raise ExportError(f"fps must be in (0, 120], got {fps}")
    return path


def export(
    session: SessionReader,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    signal: str | None = None,
    cmap: str = "energy",
    pixel: int = 4,
    frame: int | None = None,
    fps: float = 8.0,
    force: bool = False,
) -> list[Path]:
    """Export ``session`` as ``fmt`` (one of :data:`FORMATS`) to ``out``; returns the paths written.

    ``signal`` (default: the session's first), ``cmap``, ``pixel`` (size of one tile value in
    pixels) and ``frame`` (PNG: one frame; all frames into a directory when ``None``) apply to the
    image formats. An existing ``out`` raises :class:`ExportError` unless ``force``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    path = check_output(out, fmt, fps, force)
    if fmt == "json":
        return [export_json(session, path)]
    if fmt == "npz":
        return [export_npz(session, path)]
    return write_images(FrameRenderer(session, signal, cmap, pixel), fmt, path, frame, fps)


def write_images(renderer: Any, fmt: str, path: Path, frame: int | None, fps: float) -> list[Path]:
    """``renderer``'s frames as ``fmt``: PNG (one frame, or every frame into directory ``path``), GIF or MP4."""
    if fmt == "png":
        return export_png(renderer, path, frame)
    if fmt == "gif":
        return [export_gif(renderer, path, fps)]
    return [export_mp4(renderer, path, fps)]


__all__ = ["FORMATS", "ExportError", "FrameRenderer", "caption", "export", "session_json"]
