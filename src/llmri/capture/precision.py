"""What a frame's precision makes of its values: the frame dtypes, overflow at capture, and tolerances.

A frame stores each reduced value in its session's ``frame_dtype`` (:data:`~llmri.frame.FRAME_DTYPES`).
Rounding to nearest leaves an error of at most half a unit in the last place of the value's binade
(float16: ``2**-11`` of the value, bfloat16: ``2**-8``, float32: ``2**-24``), and a value beyond the dtype's
largest (float16: 65,504) becomes ±inf. :class:`OverflowCounter` counts those at capture, per signal and
layer; :func:`rounding_error` and :func:`difference_tolerance` say what a value and a difference of two
frames can be trusted to (docs/precision.md).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..settings import check_frame_dtype

#: Per frame dtype: (stored fraction bits, smallest normal exponent, largest finite value).
_FORMATS: dict[str, tuple[int, int, float]] = {
    "float16": (10, -14, 65504.0),
    "bfloat16": (7, -126, float.fromhex("0x1.fep127")),
    "float32": (23, -126, float(np.finfo(np.float32).max)),
}


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # llmri/


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside llmri, for a warning raised from llmri's own code
    (``warnings.warn``'s ``skip_file_prefixes`` needs Python 3.12)."""
    level = 2
    frame: Any = sys._getframe(2)  # 1: the function that calls warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


class FrameOverflowWarning(UserWarning):
    """Values of a capture did not fit its frame dtype and were stored as ±inf."""


def largest(frame_dtype: str) -> float:
    """The largest finite value of ``frame_dtype``: past it a value is stored as ±inf."""
    return _FORMATS[check_frame_dtype(frame_dtype)][2]


def rounding_error(frame_dtype: str, magnitude: Any) -> np.ndarray:
    """The most a value of ``|x| <= magnitude`` can be off once stored in ``frame_dtype``: half a unit in
    the last place of ``magnitude``'s binade (float64, elementwise); ``inf`` past :func:`largest`.

    At ``|x| = 22,500`` float16 gives 8.0, bfloat16 64.0, float32 ~0.001.
    """
    bits, emin, top = _FORMATS[check_frame_dtype(frame_dtype)]
    m = np.abs(np.asarray(magnitude, dtype=np.float64))
    with np.errstate(divide="ignore"):
        exp = np.floor(np.log2(np.where(m > 0, m, 2.0**emin)))
    exp = np.maximum(exp, emin)  # subnormals: the spacing of the smallest binade
    half_ulp = np.exp2(exp - bits - 1)
    return np.where(np.isfinite(m) & (m <= top), half_ulp, np.inf)


def difference_tolerance(frame_dtype: str, a: Any, b: Any = None) -> np.ndarray:
    """How far ``a - b`` (two stored frames, elementwise) can be from the difference of the values the
    model computed, from storage alone: ``rounding_error(|a|) + rounding_error(|b|)``
    (``b=None``: two values of ``a``'s size). A difference within it is storage noise, not the model's;
    ``inf`` where either side overflowed. For ``llmri.compare`` and intervention checks."""
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    out: np.ndarray = rounding_error(frame_dtype, a) + rounding_error(frame_dtype, b)
    return out


def count_overflow(values: Any, stored: Any) -> Any:
    """Per ``[..., H, W]`` tile: how many of its ``values`` (the reducer's float32 output, a Tensor) are
    finite but became ±inf in ``stored`` (the same values in the frame dtype): int64 ``[...]``.

    On the CPU one pass of ``aminmax`` first says whether any value reaches the dtype's overflow threshold
    (16x cheaper than counting; docs/benchmarks.md, "Frame dtypes"), and the exact count runs only then.
    Elsewhere the count is queued as it is: a branch would wait for the device."""
    import torch

    if stored.dtype == values.dtype:
        return torch.zeros(values.shape[:-2], dtype=torch.int64, device=values.device)
    if values.device.type == "cpu" and values.numel():
        info = torch.finfo(stored.dtype)
        threshold = info.max + info.eps * info.max / (2 * (2 - info.eps))  # halfway past the largest: inf
        lo, hi = torch.aminmax(values)
        if -threshold < lo.item() and hi.item() < threshold:  # a NaN fails both: the exact count below
            return torch.zeros(values.shape[:-2], dtype=torch.int64, device=values.device)
    return (stored.isinf() & values.isfinite()).sum(dim=(-2, -1))


class OverflowCounter:
    """A capture's overflow counts, per signal and layer, summed over its steps; says so once at the end."""

    def __init__(self, signals: Sequence[str], frame_dtype: str, n_layers: int = 0) -> None:
        self.signals = list(signals)
        self.frame_dtype = frame_dtype
        self.counts = np.zeros((len(self.signals), int(n_layers)), dtype=np.int64)

    def add(self, step_counts: np.ndarray) -> None:
        """Add one step's counts, ``[signals, layers]`` (the first step sets the number of layers)."""
        step = np.asarray(step_counts, dtype=np.int64).reshape(len(self.signals), -1)
        if self.counts.shape != step.shape and not self.counts.any():
            self.counts = np.zeros_like(step)
        self.counts += step

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def meta(self) -> dict[str, Any]:
        """The session's ``overflow`` meta key: ``{"total", "per_layer": {signal: [L ints]}}``."""
        return {
            "total": self.total,
            "per_layer": {s: [int(x) for x in self.counts[i]] for i, s in enumerate(self.signals)},
        }

    def message(self) -> str:
        """One line saying what overflowed, or ``""`` when nothing did."""
        if not self.total:
            return ""
        parts = []
        for i, s in enumerate(self.signals):
            row = self.counts[i]
            if row.any():
                layers = np.flatnonzero(row)
                span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
                parts.append(f"{int(row.sum())} {s} ({span})")
        return (
            f"{self.total} frame values overflowed {self.frame_dtype} (|x| > {largest(self.frame_dtype):g}) and are "
            f"stored as ±inf: {', '.join(parts)}; frame_dtype='bfloat16' or 'float32' keeps them"
        )

    def warn(self) -> None:
        """One :class:`FrameOverflowWarning` if anything overflowed, attributed to the caller's own code."""
        msg = self.message()
        if msg:
            warnings.warn(msg, FrameOverflowWarning, stacklevel=_caller_level())


__all__ = [
    "FrameOverflowWarning",
    "OverflowCounter",
    "check_frame_dtype",
    "count_overflow",
    "difference_tolerance",
    "largest",
    "rounding_error",
]
