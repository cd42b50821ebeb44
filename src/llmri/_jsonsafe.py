"""One JSON-safe copy for every JSON llmri writes: session metadata in a store, exports, the viewer's API."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(x: Any) -> Any:
    """A copy of ``x`` that ``json.dumps(..., allow_nan=False)`` accepts: dict keys become strings,
    tuples lists, numpy scalars and arrays Python values, and non-finite floats (NaN, infinities)
    ``None``. Any other value is returned as it is (so ``json.dumps`` still refuses an object it
    cannot write)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        return json_safe(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


__all__ = ["json_safe"]
