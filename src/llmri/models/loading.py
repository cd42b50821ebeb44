"""Loading models: the bundled default (SmolLM2-135M-Instruct), model directories, GGUF files, hub ids.

Security by default: weights load from safetensors only, and ``trust_remote_code`` stays off,
unless the caller explicitly allows pickled weights or remote code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ModelLoadError
from .identity import DEFAULT_NAME, cache_dir, default_gguf_path, describe_model, module_fingerprint
from .placement import DeviceMap, placement_kwargs
from .placement import torch_dtype as _torch_dtype

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A causal LM ready to capture. ``.model`` and ``.tokenizer`` are the transformers objects."""

    model: Any
    tokenizer: Any
    name: str
    path: str
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> Any:
        """Where input ids go: the input embedding's device (accelerate's execution device for an
        offloaded one)."""
        get_emb = getattr(self.model, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        weight = getattr(emb, "weight", None)
        if weight is not None and not weight.is_meta:
            return weight.device
        execution = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
        return execution if execution is not None else next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        return describe_model(self)

    def __repr__(self) -> str:
        return f"<LoadedModel {self.name} layers={self.n_layers} d_model={self.d_model} {self.fingerprint[:12]}>"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a safetensors model directory, atomically."""
    from .._errors import require

    require("gguf", "gguf")
    require("accelerate", "gguf")
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot dequantize"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{gguf}: transformers cannot load this GGUF file: {first}") from exc
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the embedding; safetensors refuses shared storage
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        model.generation_config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "llmri-source.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_model_dir(gguf: Path) -> Path:
    """The cached safetensors directory for ``gguf``, converting it once if needed."""
    gguf = gguf.resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / (target.name + ".lock")
    with open(lock, "w") as fh:
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)  # a second process waits here instead of converting twice
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _check_dir(path: Path, allow_pickle: bool) -> bool:
    """Validate a model directory; returns whether safetensors weights are present."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    names = [p.name for p in path.iterdir()]
    has_st = any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names)
    has_pickle = any(n.endswith(_PICKLE_SUFFIXES) for n in names)
    if not has_st and has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"{path}: only pickle weights (.bin/.pt), which can run arbitrary code when loaded; "
            "convert them to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust the source"
        )
    if not has_st and not has_pickle:
        raise ModelLoadError(f"{path}: no weights found (expected *.safetensors)")
    if not any(n in _TOKENIZER_FILES for n in names):
        raise ModelLoadError(f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    return has_st


def _from_dir(
    path: Path, name: str, *, dtype: Any, device: Any, trust_remote_code: bool, allow_pickle: bool
) -> LoadedModel:
    has_st = _check_dir(path, allow_pickle)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot read config.json: {_first_line(exc)}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            config=config,
            dtype=_torch_dtype(dtype),
            use_safetensors=has_st,
            trust_remote_code=trust_remote_code,
            **placement_kwargs(device),
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise ModelLoadError(
                f"{path}: a {getattr(config, 'model_type', '?')} model is not a causal language model"
            ) from exc
        raise ModelLoadError(f"{path}: cannot load the model: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the model: {_first_line(exc)}") from exc
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the tokenizer: {_first_line(exc)}") from exc
    return _finish(model, tok, name, str(path), device)


def _finish(model: Any, tok: Any, name: str, path: str, device: Any) -> LoadedModel:
    if device is not None and not isinstance(device, DeviceMap):
        model.to(device)
    model.eval()
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    # once per model object: llmri.wrap(it) reuses it
    return LoadedModel(model=model, tokenizer=tok, name=name, path=path, fingerprint=module_fingerprint(model))


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def load_model(
    spec: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = None,
    device: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    backend: str | None = None,
    device_map: Any = None,
    offload_folder: str | None = None,
) -> Any:
    """Load a causal LM for capture.

    ``spec``: ``None`` or ``"default"`` for the bundled SmolLM2-135M-Instruct (converted once from
    its GGUF into a safetensors directory in the cache), a local model directory, a ``.gguf`` file,
    or a Hugging Face hub id (needs network). ``dtype`` defaults to float32. Returns a
    :class:`LoadedModel`; with ``backend="llama.cpp"``, the GGUF file itself loaded by llama.cpp
    (:func:`llmri.backends.llamacpp.load_gguf`; ``dtype`` and ``device`` do not apply). ``device_map`` (accelerate's:
    ``"auto"`` or ``{module: "cpu" | "disk" | "cuda:0" ...}``, with ``offload_folder`` for disk)
    dispatches the model instead of ``device``.
    """
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("give device or device_map, not both")
        device = DeviceMap(device_map, offload_folder)
    if backend is not None:
        # a backend that runs files of its own (llama.cpp: the GGUF itself) loads them; the registry
        # says which, so this package imports no backend
        from ..backends.base import BACKENDS

        if backend in BACKENDS and BACKENDS.get(backend).loads_own_files:
            if dtype is not None or device is not None:
                raise ModelLoadError(f"the {backend} backend runs the GGUF as it is: dtype and device do not apply")
            return BACKENDS.get(backend).load_model(spec)
    if isinstance(spec, str) and spec.strip() in ("", "default"):
        spec = None
    if spec is None:
        return _from_dir(
            gguf_model_dir(default_gguf_path()),
            DEFAULT_NAME,
            dtype=dtype,
            device=device,
            trust_remote_code=False,
            allow_pickle=False,
        )
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{path}: a model file must be .gguf (or pass a model directory)")
            return _from_dir(
                gguf_model_dir(path), path.stem, dtype=dtype, device=device, trust_remote_code=False, allow_pickle=False
            )
        return _from_dir(
            path, path.name, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
    s = str(spec)
    if not _HUB_ID.match(s) or s.startswith((".", "/", "~")):
        raise ModelLoadError(f"{s}: no such file or directory")
    return _from_hub(s, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def _from_hub(repo: str, *, dtype: Any, device: Any, trust_remote_code: bool, allow_pickle: bool) -> LoadedModel:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"] + (["*.bin"] if allow_pickle else [])
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth...
        raise ModelLoadError(
            f"{repo}: not a local path, and it could not be fetched from the Hugging Face hub "
            f"(offline or unknown repo?): {_first_line(exc)}"
        ) from exc
    return _from_dir(
        Path(local), repo, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
