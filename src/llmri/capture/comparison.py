"""``llmri.compare``: how far two sessions differ, per token and layer, on what both store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CaptureError
from .precision import difference_tolerance


@dataclass(frozen=True)
class Comparison:
    """``cosine`` / ``rel_l2`` float64 ``{signal: [tokens, layers]}`` over the positions both sessions
    hold (``rel_l2 = |a - b| / |a|``; a row whose difference is within storage rounding, by
    :func:`~llmri.capture.precision.difference_tolerance`, counts as equal: cosine 1, rel_l2 0);
    ``first_divergence``: the first position whose token differs (``None``: none within the shorter);
    ``lens_changed`` ``[tokens, layers]`` bool where both have a lens: whether the top-1 differs."""

    cosine: dict[str, np.ndarray]
    rel_l2: dict[str, np.ndarray]
    first_divergence: int | None
    lens_changed: np.ndarray | None
    a_id: str
    b_id: str

    def to_xarray(self) -> Any:
        import xarray as xr

        data: dict[str, Any] = {}
        for s in self.cosine:
            data[f"{s}_cosine"] = (("position", "layer"), self.cosine[s])
            data[f"{s}_rel_l2"] = (("position", "layer"), self.rel_l2[s])
        if self.lens_changed is not None:
            data["lens_changed"] = (("position", "layer"), self.lens_changed)
        return xr.Dataset(data, attrs={"a": self.a_id, "b": self.b_id, "first_divergence": self.first_divergence})


def compare(a: Any, b: Any) -> Comparison:
    """Compare two sessions (the same model's, the same reducer and tile) position by position."""
    if a.meta.get("reducer") != b.meta.get("reducer") or tuple(a.tile) != tuple(b.tile):
        raise CaptureError("the two sessions use different reducers or tiles: their frames are not comparable")
    n = min(len(a), len(b))
    same = a.tokens.ids[:n] == b.tokens.ids[:n]
    first = None if same.all() else int(np.argmin(same))
    dtype = str(a.meta.get("frame_dtype") or "float16")
    cos, rel = {}, {}
    for s in [x for x in a.signals if x in b.signals]:
        fa = np.asarray(a.frames(s, 0, n), dtype=np.float64)
        fb = np.asarray(b.frames(s, 0, n), dtype=np.float64)
        width = int(np.prod(fa.shape[2:], dtype=np.int64))  # not -1: a session with no frames has size 0
        fa, fb = fa.reshape(*fa.shape[:2], width), fb.reshape(*fb.shape[:2], width)
        fa, fb = np.nan_to_num(fa), np.nan_to_num(fb)
        diff = fa - fb
        equal = (np.abs(diff) <= difference_tolerance(dtype, fa, fb)).all(-1)
        na, nb = np.linalg.norm(fa, axis=-1), np.linalg.norm(fb, axis=-1)
        c = (fa * fb).sum(-1) / np.maximum(na * nb, 1e-30)
        r = np.linalg.norm(diff, axis=-1) / np.maximum(na, 1e-30)
        cos[s], rel[s] = np.where(equal, 1.0, c), np.where(equal, 0.0, r)
    lens = None
    if "lens" in a.readouts and "lens" in b.readouts:
        la, lb = a.lens(0, n), b.lens(0, n)
        lens = la.top_ids[..., 0] != lb.top_ids[..., 0]
    return Comparison(cos, rel, first, lens, a.id, b.id)
