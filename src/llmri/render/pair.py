"""Two sessions side by side as one video: ``A | B | B - A`` per token, for an intervened session
against its baseline (``llmri export ... --against baseline``).

Each output frame holds three panels in the frame layout of :mod:`llmri.render.grid`: session A's
frame, session B's frame, both drawn with **A's** per-layer scales (so one colour is one value in both),
and their difference ``B - A`` in the signed ``diverging`` map on the same scales (white: unchanged).
Token ``i`` of both is shown at once; where one session is shorter, its panel (and the difference) is
left blank after its last token. Over the panels a title line names them; under them a caption line
gives both tokens and, from the first position whose tokens differ, where the texts diverged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..store import SessionReader
from .export import ExportError, FrameRenderer, check_output, write_images
from .grid import BACKGROUND, fallback_scales, frame_size, render_frame, session_scales

#: Pixels between two panels.
PANEL_GAP = 6
#: The title strip's and the caption strip's heights in pixels.
STRIP = 18
DIFF_CMAP = "diverging"


def _tok(session: SessionReader, i: int) -> str:
    if i >= len(session):
        return "(ended)"
    return "\u201c" + json.dumps(session.tokens[i].text, ensure_ascii=False)[1:-1] + "\u201d"


def first_divergence(a: SessionReader, b: SessionReader) -> int | None:
    """The first position whose token ids differ (the shorter session's end counts when one is longer)."""
    n = min(len(a), len(b))
    same = np.asarray(a.tokens.ids[:n]) == np.asarray(b.tokens.ids[:n])
    if not same.all():
        return int(np.argmin(same))
    return None if len(a) == len(b) else n


class PairRenderer:
    """Renders ``A | B | B - A`` frames of one signal (see the module docstring)."""

    def __init__(self, a: SessionReader, b: SessionReader, signal: str | None, cmap: str, pixel: int) -> None:
        signal = signal or (a.signals[0] if a.signals else None)
        for s in (a, b):
            if not s.signals:
                raise ExportError(f"session {s.id} is chat-only: it has no frames to draw")
            if signal not in s.signals:
                raise ExportError(f"session {s.id}: no signal {signal!r} (it has: {', '.join(s.signals)})")
        if list(a.layers) != list(b.layers) or tuple(a.tile) != tuple(b.tile):
            raise ExportError(
                f"sessions {a.id} and {b.id} have different layers or tiles: their frames cannot be drawn side by side"
            )
        # A's renderer checks cmap and pixel, and fixes the one set of scales both panels use
        self.left = FrameRenderer(a, signal, cmap, pixel, caption=False)
        self.a, self.b, self.signal, self.cmap, self.pixel = a, b, str(signal), cmap, pixel
        scales = session_scales(a.meta, self.signal) or self.left.scales
        if scales is None:
            scales = list(fallback_scales(b.frames(self.signal, 0, min(len(b), 512))))
        self.scales = scales
        self.diverged = first_divergence(a, b)
        self.label = f"{a.id} vs {b.id}"
        self.shape = (len(a.layers), *tuple(a.tile))
        self._font: Any = None

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def _font_obj(self) -> Any:
        if self._font is None:
            from PIL import ImageFont

            self._font = ImageFont.load_default(size=12)
        return self._font

    def panels(self, index: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Token ``index``'s three panels as ``uint8[h, w, 3]`` (``None``: blank, that session ended)."""
        fa = self.a.frames(self.signal, index, index + 1)[0] if index < len(self.a) else None
        fb = self.b.frames(self.signal, index, index + 1)[0] if index < len(self.b) else None
        pa = None if fa is None else render_frame(fa, self.scales, self.cmap, pixel=self.pixel)
        pb = None if fb is None else render_frame(fb, self.scales, self.cmap, pixel=self.pixel)
        pd = None
        if fa is not None and fb is not None:
            d = np.asarray(fb, dtype=np.float32) - np.asarray(fa, dtype=np.float32)
            pd = render_frame(np.nan_to_num(d, nan=0.0), self.scales, DIFF_CMAP, pixel=self.pixel)
        return pa, pb, pd

    def caption(self, index: int) -> str:
        n = len(self)
        a, b = _tok(self.a, index), _tok(self.b, index)
        line = f"{index + 1}/{n}  A {a}" + ("" if a == b else f"  B {b}")
        if self.diverged is not None and index >= self.diverged:
            line += f"  (diverged at {self.diverged + 1})"
        return line

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` of the pair as ``uint8[height, width, 3]``: title, three panels, caption."""
        from PIL import Image, ImageDraw

        h, w = frame_size(self.shape[0], self.shape[1], self.shape[2], self.pixel)
        width = 3 * w + 2 * PANEL_GAP
        img = Image.new("RGB", (width, h + 2 * STRIP), (0, 0, 0))
        draw = ImageDraw.Draw(img)
        font = self._font_obj()
        titles = ("A " + self.a.id, "B " + self.b.id, "B - A")
        for k, (title, panel) in enumerate(zip(titles, self.panels(index), strict=True)):
            x = k * (w + PANEL_GAP)
            draw.text((x + 2, 3), title, fill=(235, 235, 235), font=font)
            if panel is None:
                img.paste(Image.new("RGB", (w, h), BACKGROUND), (x, STRIP))
            else:
                img.paste(Image.fromarray(panel), (x, STRIP))
        draw.text((3, STRIP + h + 3), self.caption(index), fill=(235, 235, 235), font=font)
        return np.asarray(img)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.image(i)


PAIR_FORMATS = ("gif", "mp4", "png")


def export_pair(
    a: SessionReader,
    b: SessionReader,
    fmt: str,
    out: Any,
    *,
    signal: str | None = None,
    cmap: str = "energy",
    pixel: int = 4,
    frame: int | None = None,
    fps: float = 8.0,
    force: bool = False,
) -> list[Any]:
    """Export sessions ``a`` and ``b`` side by side with their difference (see the module docstring)
    as a GIF, an MP4, or PNG (one frame with ``frame``, else every frame into directory ``out``)."""
    if fmt not in PAIR_FORMATS:
        raise ExportError(f"a pair exports as {', '.join(PAIR_FORMATS)}, not {fmt!r}")
    path = check_output(out, fmt, fps, force)
    return write_images(PairRenderer(a, b, signal, cmap, pixel), fmt, path, frame, fps)


__all__ = ["PAIR_FORMATS", "PairRenderer", "export_pair", "first_divergence"]
