"""The compact binary form in which the viewer ships arrays (frame ranges, per-layer stats) to a client.

Frames are never sent as nested JSON number lists: a 1,000-token session with three signals of
30 layers of 16x16 tiles is 46 MB of float16, which JSON would triple and make slow to parse.
The same message is used over HTTP (``GET .../frames``) and, by the live chat helper, as a binary
WebSocket message, so one decoder in the client serves both.

Layout of one message (all integers little-endian)::

    offset  size  field
    0       4     magic  b"LMRI"
    4       1     version (1)
    5       1     reserved (0)
    6       2     header length H in bytes (uint16)
    8       H     header: UTF-8 JSON object, padded with spaces so that 8 + H is a multiple of 8
    8+H     ...   payload: the array's values, C order, little-endian, ``dtype`` as in the header

The header always has:

``shape``   list of ints, the array's shape (a frame range is ``[n, layers, H, W]``)
``dtype``   ``"float16"``, ``"float32"``, ``"bfloat16"`` (2 bytes a value: the upper half of the float32,
            ``value = float32(uint32(bits) << 16)``) or ``"uint8"`` (quantised:
            ``value = lo + q * (hi - lo) / 255``, with ``lo``/``hi`` in the header). Frames travel in their
            session's ``frame_dtype`` (:func:`encode_frames`), so a value past float16's range stays itself.
``kind``    what the array is: ``"frames"`` (reduced tiles) or ``"stats"`` (``[2, n, layers]``: norm, sparsity)
``signal``  ``"resid"``, ``"attn"`` or ``"mlp"``; several comma-separated (``"resid,attn,mlp"``) when one
            message stacks several signals, in that order, as ``[signals, n, layers, H, W]``
``start``   first token index of the range; ``stop`` one past the last (``stop - start == shape[0]`` for
            one signal's frames, ``shape[1]`` for stacked signals and for stats)

and may carry more keys (``total``: frames committed in the session when the range was read,
``status``: the session's status then, ``session``: its id). Readers ignore keys they do not know.
The payload starts 8-byte aligned, so a browser can view it as a ``Uint16Array``/``Float32Array``
without copying.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ..frame import FRAME_NUMPY, bfloat16_bits, from_bfloat16_bits

MAGIC = b"LMRI"
VERSION = 1
MEDIA_TYPE = "application/x-llmri-array"
_DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8, "bfloat16": np.uint16}


def encode_array(array: np.ndarray, **header: Any) -> bytes:
    """Pack ``array`` (float16, float32 or uint8) and ``header`` keys into one message (see module doc)."""
    arr = np.ascontiguousarray(array)
    name = arr.dtype.name
    if name not in _DTYPES or name == "bfloat16":
        raise ValueError(f"cannot encode dtype {name}: use float16, float32 or uint8")
    return _pack(arr, name, header)


def encode_frames(array: np.ndarray, frame_dtype: str, **header: Any) -> bytes:
    """Frames in their session's precision (``frame_dtype``): float16 and float32 as themselves, bfloat16
    values (float32 in memory) as their bits, ``dtype: "bfloat16"``."""
    if frame_dtype == "bfloat16":
        return _pack(bfloat16_bits(array), "bfloat16", header)
    return encode_array(np.asarray(array, dtype=FRAME_NUMPY[frame_dtype]), **header)


def _pack(arr: np.ndarray, name: str, header: dict[str, Any]) -> bytes:
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    head = dict(header)
    head["shape"] = [int(x) for x in arr.shape]
    head["dtype"] = name
    raw = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    raw += b" " * ((-(8 + len(raw))) % 8)
    if len(raw) > 0xFFFF:
        raise ValueError("header too long")
    return MAGIC + struct.pack("<BBH", VERSION, 0, len(raw)) + raw + arr.tobytes()


def decode_array(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Unpack a message made by :func:`encode_array` or :func:`encode_frames`: ``(header, array)``
    (bfloat16 as float32); raises ValueError if malformed."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError("not an llmri array message")
    version, _, hlen = struct.unpack("<BBH", data[4:8])
    if version != VERSION:
        raise ValueError(f"unsupported llmri array message version {version}")
    header = json.loads(data[8 : 8 + hlen].decode())
    dtype = np.dtype(_DTYPES[header["dtype"]]).newbyteorder("<")
    shape = tuple(int(x) for x in header["shape"])
    count = int(np.prod(shape)) if shape else 1
    payload = data[8 + hlen :]
    if len(payload) != count * dtype.itemsize:
        raise ValueError(f"payload is {len(payload)} bytes, header says {count * dtype.itemsize}")
    arr = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return header, from_bfloat16_bits(arr) if header["dtype"] == "bfloat16" else arr


def quantise_u8(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Linear uint8 quantisation of ``array``: ``(q, lo, hi)`` with ``value ~= lo + q * (hi - lo) / 255``."""
    a = np.asarray(array, dtype=np.float32)
    finite = a[np.isfinite(a)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    span = hi - lo if hi > lo else 1.0
    q = np.clip(np.rint((np.nan_to_num(a, nan=lo) - lo) * (255.0 / span)), 0, 255).astype(np.uint8)
    return q, lo, hi
