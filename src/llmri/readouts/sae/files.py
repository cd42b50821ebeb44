"""Reading an SAE's files: JSON, safetensors, npz and (only when allowed) pickles, each failure one line
naming the file, and the weight checks every loader shares."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._errors import SAEError, one_line

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def fail(path: Path | str, what: str) -> SAEError:
    return SAEError(one_line(f"{path}: {what}"))


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise fail(path, "missing (an SAE's config)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise fail(path, f"not a readable JSON config ({one_line(exc, 120)})") from None
    if not isinstance(data, dict):
        raise fail(path, f"not a JSON object (a {type(data).__name__})")
    return data


def read_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file, float32 on the CPU (torch)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise fail(path, "missing (the SAE's weights)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise fail(path, f"not a safetensors file ({one_line(exc, 120)})") from None
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def read_npz(path: Path) -> dict[str, Any]:
    """Every array of an npz file (no pickles), as float32 torch tensors."""
    import zipfile

    import numpy as np
    import torch

    if not path.is_file():
        raise fail(path, "missing (the SAE's weights)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(path, f"not an npz file of arrays ({one_line(exc, 120)})") from None
    out = {}
    for key, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise fail(path, f"{key} is not numeric (dtype {a.dtype})")
        out[key] = torch.from_numpy(a.astype(np.float32))
    return out


def read_pickle(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """A pickled state dict (``torch.load``), refused unless the caller allows pickles."""
    if not allow_pickle:
        raise fail(
            path,
            "a pickle, which can run arbitrary code when loaded; convert it to safetensors, "
            "or pass allow_pickle=True if you trust the source",
        )
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - an unpickler raises anything; the user gets one line
        raise fail(path, f"could not be unpickled ({one_line(exc, 120)})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise fail(path, "not a state dict of tensors")
    return {str(k): v.to(torch.float32) for k, v in obj.items()}


def check_weights(path: Path, w: Mapping[str, Any], d_in: int | None = None, d_sae: int | None = None) -> None:
    """``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, when
    present, ``threshold [d_sae]``; ``d_in`` / ``d_sae`` from the config when it gives them."""
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in w:
            raise fail(path, f"no {key} weight (has: {', '.join(sorted(w)) or 'nothing'})")
    enc = tuple(w["W_enc"].shape)
    if len(enc) != 2:
        raise fail(path, f"W_enc has shape {enc}, expected [d_in, d_sae]")
    d_in = enc[0] if d_in is None else d_in
    d_sae = enc[1] if d_sae is None else d_sae
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in want.items():
        if key in w and tuple(w[key].shape) != shape:
            raise fail(
                path, f"{key} has shape {list(w[key].shape)}, expected {list(shape)} (d_in {d_in}, d_sae {d_sae})"
            )
    import torch

    for key in want:
        if key in w and not bool(torch.isfinite(w[key]).all()):
            raise fail(path, f"{key} holds NaN or infinite values")
