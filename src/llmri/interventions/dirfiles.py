"""A :class:`~.direction.Direction`'s files, one reader and writer per format (STYLE 19): each
writes ``{layer: float32 [d_model]}`` and the provenance, and reads them back (the Direction is
built in :mod:`.direction`, which calls these).

GGUF: the control-vector layout llama.cpp's ``--control-vector`` reads (``common.cpp``,
``common_control_vector_load_one``) and repeng writes (``ControlVector.export_gguf``):
``general.architecture = controlvector``, ``controlvector.model_hint``, ``controlvector.layer_count``
and one 1-D F32 tensor ``direction.N`` per layer, added to the output of block ``N`` counting from 0
(llama.cpp puts it in ``tensors[N]`` and adds it right after block ``N``'s residual add;
``llama_apply_adapter_cvec``'s buffer starts at block 1: block 0's output is never steered, and a
file naming ``direction.0`` is refused). llmri adds its provenance as ``llmri.direction.*`` keys,
which llama.cpp ignores. safetensors: the same tensor names, the provenance in the header's metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CaptureError

_NAME = re.compile(r"^direction\.(\d+)$")
_FORMAT = "llmri.direction"


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in WRITERS:
        raise CaptureError(f"{path}: a direction is saved as .gguf or .safetensors, not {s or 'no suffix'!r}")
    return s


#: What a file holds: ``{layer: float32 [d_model]}``, the model fingerprint ("" for none), provenance.
Rows = dict[int, np.ndarray]


def _named(rows: Rows) -> dict[str, np.ndarray]:
    return {f"direction.{layer}": np.ascontiguousarray(v, dtype=np.float32) for layer, v in rows.items()}


def _meta(model: str, prov: dict[str, Any]) -> dict[str, str]:
    return {"model": model, "provenance": json.dumps(prov, sort_keys=True, default=str)}


def _write_gguf(rows: Rows, model: str, prov: dict[str, Any], path: Path) -> None:
    import gguf

    if 0 in rows:
        raise CaptureError(
            "a GGUF control vector cannot hold layer 0 (llama.cpp never steers block 0's output and refuses "
            "direction.0): save d.select(layers) without it, or save .safetensors"
        )
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", str(prov.get("model_hint", "") or "llama"))
    w.add_int32("controlvector.layer_count", len(rows))
    for k, v in _meta(model, prov).items():
        w.add_string(f"llmri.direction.{k}", v)
    for name, row in _named(rows).items():
        w.add_tensor(name, row)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_safetensors(rows: Rows, model: str, prov: dict[str, Any], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(_named(rows), str(path), metadata={"format": _FORMAT, **_meta(model, prov)})


Read = tuple[Rows, str | None, dict[str, Any]]


def _checked(rows: Rows, meta: dict[str, str], path: Path) -> Read:
    if not rows:
        raise CaptureError(f"{path}: no direction.N tensors")
    widths = {r.shape for r in rows.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise CaptureError(f"{path}: the direction tensors are not 1-D of one width ({sorted(widths)})")
    try:
        prov = json.loads(meta.get("provenance") or "{}")
    except json.JSONDecodeError:
        raise CaptureError(f"{path}: llmri's provenance in this file is not JSON") from None
    for k in ("model_hint",):
        if meta.get(k):
            prov.setdefault(k, meta[k])
    return dict(sorted(rows.items())), meta.get("model") or None, prov


def _read_gguf(path: Path) -> Read:
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise CaptureError(f"{path}: not a GGUF file ({exc})") from None

    def text(key: str) -> str:
        f = r.get_field(key)
        return "" if f is None else str(f.contents())

    if text("general.architecture") != "controlvector":
        raise CaptureError(f"{path}: not a control vector (general.architecture is {text('general.architecture')!r})")
    rows: dict[int, np.ndarray] = {}
    for t in r.tensors:
        m = _NAME.match(t.name)
        if m is None:
            raise CaptureError(f"{path}: tensor {t.name!r} is not direction.N")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise CaptureError(f"{path}: {t.name} is {t.tensor_type.name}, a control vector is F32")
        layer = int(m.group(1))
        v = np.array(t.data, dtype=np.float32).reshape(-1)
        rows[layer] = rows[layer] + v if layer in rows else v  # llama.cpp sums repeats
    meta = {k: text(f"llmri.direction.{k}") for k in ("model", "provenance")}
    meta["model_hint"] = text("controlvector.model_hint")
    return _checked(rows, meta, path)


def _read_safetensors(path: Path) -> Read:
    from safetensors import SafetensorError, safe_open

    rows: dict[int, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                m = _NAME.match(name)
                if m is None:
                    raise CaptureError(f"{path}: tensor {name!r} is not direction.N")
                rows[int(m.group(1))] = np.asarray(f.get_tensor(name), dtype=np.float32)
    except SafetensorError as exc:
        raise CaptureError(f"{path}: not a safetensors file ({exc})") from None
    return _checked(rows, meta, path)


WRITERS: dict[str, Callable[[Rows, str, dict[str, Any], Path], None]] = {
    ".gguf": _write_gguf,
    ".safetensors": _write_safetensors,
}
READERS: dict[str, Callable[[Path], Read]] = {".gguf": _read_gguf, ".safetensors": _read_safetensors}


def write(path: Any, rows: Rows, model: str | None, provenance: dict[str, Any]) -> Path:
    """``rows`` and where they came from, as ``path``'s suffix says."""
    p = Path(path).expanduser()
    WRITERS[_suffix(p)](rows, model or "", provenance, p)
    return p


def read(path: Any) -> Read:
    """``(rows, model fingerprint or None, provenance)`` of a ``.gguf`` control vector (llmri's,
    llama.cpp's cvector-generator's, repeng's) or a ``.safetensors`` file llmri wrote."""
    p = Path(path).expanduser()
    suffix = _suffix(p)
    if not p.is_file():
        raise CaptureError(f"{p}: no such file")
    return READERS[suffix](p)
