"""A record's vector: float32 values kept as bytes, so a record is a hashable value that compares
exactly and serialises losslessly (base64)."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CaptureError


@dataclass(frozen=True)
class Vector:
    """float32 values, ``[d_model]`` (one for every layer) or ``[layers, d_model]`` (one per layer),
    kept as bytes so the record is a hashable value that compares exactly."""

    data: bytes
    shape: tuple[int, ...]

    @classmethod
    def of(cls, x: Any) -> Vector:
        """A tensor, an array or nested lists (or a Vector) as float32; finite, 1-D or 2-D."""
        if isinstance(x, Vector):
            return x
        if hasattr(x, "detach"):  # a torch tensor, on any device
            x = x.detach().float().cpu().numpy()
        try:
            a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError):
            raise CaptureError(f"a direction must be numbers (a tensor, an array or a list), got {x!r:.80}") from None
        if a.ndim not in (1, 2) or a.size == 0:
            raise CaptureError(f"a direction must be [d_model] or [layers, d_model], got shape {list(a.shape)}")
        if not np.isfinite(a).all():
            raise CaptureError("a direction holds NaN or infinite values")
        return cls(a.astype("<f4").tobytes(), tuple(int(n) for n in a.shape))

    def array(self) -> np.ndarray:
        """The values, float32, read-only."""
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape)

    @property
    def width(self) -> int:
        return self.shape[-1]

    def row(self, k: int) -> np.ndarray:
        """The vector for the ``k``-th listed layer (the one vector where there is one)."""
        a = self.array()
        return a if a.ndim == 1 else a[k]

    def sha256(self) -> str:
        """The sha256 (hex) of the float32 values, little-endian, row after row."""
        return hashlib.sha256(self.data).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": "float32", "shape": list(self.shape), "base64": base64.b64encode(self.data).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any) -> Vector:
        """From :meth:`to_dict` (``base64``) or ``{"values": nested lists}``, or a plain list."""
        if not isinstance(d, Mapping):
            return cls.of(d)
        if "base64" in d:
            raw = base64.b64decode(str(d["base64"]))
            shape = tuple(int(n) for n in d.get("shape", [len(raw) // 4]))
            if d.get("dtype", "float32") != "float32" or math.prod(shape) * 4 != len(raw):
                raise CaptureError(f"a stored direction's shape {list(shape)} does not match its {len(raw)} bytes")
            return cls.of(np.frombuffer(raw, dtype="<f4").reshape(shape))
        return cls.of(d.get("values"))

    def describe(self) -> str:
        norms = np.linalg.norm(self.array(), axis=-1)
        return f"vector {'x'.join(map(str, self.shape))} |v| {float(norms.min()):.3g}" + (
            f"..{float(norms.max()):.3g}" if norms.size > 1 and norms.min() != norms.max() else ""
        )
