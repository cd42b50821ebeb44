"""One loader per SAE file format, registered by name (``SAE_FORMATS``), each turning its files into one
:class:`~llmri.readouts.sae.model.SAE`. ``load_sae`` finds the format of a path and calls its loader.

| format | files | architectures |
|---|---|---|
| ``saelens`` | ``cfg.json`` + ``sae_weights.safetensors`` | standard (relu), jumprelu, topk, batchtopk |
| ``gemma_scope`` | ``params.npz`` (``W_enc``... or ``w_enc``...) | jumprelu |
| ``gemma_scope_2`` | ``params.safetensors`` (``w_enc``...) + ``config.json`` | jumprelu |
| ``sparsify`` | ``cfg.json`` + ``sae.safetensors`` (``encoder.weight``) | topk |
| ``pickle`` | a ``.pt`` state dict with SAELens's names, only with ``allow_pickle=True`` | relu, jumprelu |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..._errors import SAEError
from ..._registry import Registry
from ...frame import SIGNALS
from .files import PICKLE_SUFFIXES, check_weights, fail, read_json, read_npz, read_pickle, read_safetensors
from .hooks import map_hook
from .model import SAE

#: A loader reads one path (a directory or a file of its format) into an SAE whose layer and signal
#: come from the files (``None`` where they do not say).
Loader = Callable[[Path, bool], SAE]
SAE_FORMATS: Registry[Loader] = Registry("SAE format")

_SAELENS_ARCH = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "batchtopk"}
_FOLDED_NORMS = ("none", "expected_average_only_in", "covariance_whitening")


def _site(path: Path, hook: str | None) -> tuple[str | None, int | None, str | None]:
    """``(signal, layer, why not)`` of a hook name: the reason stays until the user gives the site."""
    if not hook:
        return None, None, None
    try:
        signal, layer = map_hook(hook)
    except ValueError as exc:
        return None, None, str(exc)
    return signal, layer, None


def _make(path: Path, fmt: str, w: dict[str, Any], hook: str | None, **kw: Any) -> SAE:
    signal, layer, why = _site(path, hook)
    name = kw.pop("name", None) or re.sub(r"[^\w.-]+", "_", (path if path.is_dir() else path.parent).name)
    sae = SAE(
        W_enc=w["W_enc"].contiguous(),
        b_enc=w["b_enc"],
        W_dec=w["W_dec"].contiguous(),
        b_dec=w["b_dec"],
        threshold=w.get("threshold"),
        name=name,
        source_format=fmt,
        path=str(path),
        layer=layer,
        signal=signal,
        hook_name=hook,
        **kw,
    )
    if why:
        sae.meta["site_error"] = why
    return sae


def _fold_decoder_norm(w: dict[str, Any]) -> None:
    """SAELens's ``rescale_acts_by_decoder_norm``: pre-activations times |W_dec row|, decoded through
    unit rows; folded exactly into W_enc, b_enc and W_dec."""
    norm = w["W_dec"].norm(dim=-1)
    w["W_enc"] = w["W_enc"] * norm
    w["b_enc"] = w["b_enc"] * norm
    w["W_dec"] = w["W_dec"] / norm[:, None]


@SAE_FORMATS.register("saelens")
def load_saelens(path: Path, allow_pickle: bool) -> SAE:
    cfg_path, weights_path = path / "cfg.json", path / "sae_weights.safetensors"
    cfg = read_json(cfg_path)
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    arch = str(cfg.get("architecture") or ("topk" if cfg.get("activation_fn") == "topk" else "standard"))
    if arch not in _SAELENS_ARCH:
        raise fail(cfg_path, f"architecture {arch!r} is not one llmri runs ({', '.join(_SAELENS_ARCH)})")
    raw_norm = cfg.get("normalize_activations") or "none"
    # SAELens before 6 wrote a bool: True was the "expected average" scaling, folded at save
    norm = "expected_average_only_in" if raw_norm is True else str(raw_norm)
    if norm not in _FOLDED_NORMS + ("constant_norm_rescale", "layer_norm"):
        raise fail(cfg_path, f"normalize_activations {norm!r} is not one SAELens defines")
    if cfg.get("reshape_activations", "none") not in ("none", None) or meta.get("hook_head_index") is not None:
        raise fail(cfg_path, "reads attention heads (hook_z / hook_head_index), which llmri does not record")
    w = read_safetensors(weights_path)
    scaling = w.pop("scaling_factor", None)
    if scaling is not None and not bool((scaling == 1).all()):
        raise fail(weights_path, "has a fine-tuning scaling_factor, which llmri does not apply")
    kwargs = cfg.get("activation_fn_kwargs")
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch == "topk" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise fail(cfg_path, f"a topk SAE needs an integer k >= 1, has {k!r}")
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    check_weights(weights_path, w, d_in if isinstance(d_in, int) else None, d_sae if isinstance(d_sae, int) else None)
    if arch == "batchtopk" and "threshold" not in w and "topk_threshold" in w:
        # a training checkpoint: one learned threshold for every feature
        w["threshold"] = w.pop("topk_threshold").reshape(()).expand(w["b_enc"].shape).clone()
    if arch in ("jumprelu", "batchtopk") and "threshold" not in w:
        raise fail(weights_path, f"a {arch} SAE without a threshold weight")
    if cfg.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norm(w)
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if arch == "jumprelu" and meta.get("training_architecture") == "batchtopk":
        arch = "batchtopk"  # SAELens saves a trained BatchTopK SAE as the JumpReLU it runs as
    return _make(
        path,
        "saelens",
        w,
        hook,
        architecture=_SAELENS_ARCH[arch],
        k=k if arch == "topk" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations="none" if norm in _FOLDED_NORMS else norm,
        model_name=meta.get("model_name") or cfg.get("model_name"),
        meta={"normalize_activations": norm},
    )


def _gemma_scope_hook(path: Path) -> str | None:
    """Gemma Scope's site from its hub layout: ``gemma-scope-2b-pt-res/layer_20/width_16k/...``."""
    layer = next((int(m.group(1)) for p in path.parts if (m := re.fullmatch(r"layer_(\d+)", p))), None)
    kind = next((m.group(1) for p in path.parts if (m := re.search(r"gemma-scope-.*-(res|mlp|att)(?:-|$)", p))), None)
    if layer is None or kind is None:
        return None
    return f"blocks.{layer}." + {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[kind]


@SAE_FORMATS.register("gemma_scope")
def load_gemma_scope(path: Path, allow_pickle: bool) -> SAE:
    file = path / "params.npz" if path.is_dir() else path
    w = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in read_npz(file).items()}
    if "threshold" not in w:
        raise fail(file, "no threshold weight (Gemma Scope SAEs are JumpReLU)")
    check_weights(file, w)
    parts = file.parent.parts
    start = next((i for i, p in enumerate(parts) if re.fullmatch(r"layer_\d+", p)), len(parts) - 1)
    name = "_".join(parts[start:])
    return _make(file, "gemma_scope", w, _gemma_scope_hook(file.parent), architecture="jumprelu", name=name,
                 apply_b_dec_to_input=False)  # fmt: skip


@SAE_FORMATS.register("gemma_scope_2")
def load_gemma_scope_2(path: Path, allow_pickle: bool) -> SAE:
    d = path if path.is_dir() else path.parent
    cfg_path = d / "config.json"
    cfg = read_json(cfg_path)
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise fail(cfg_path, f"architecture {cfg.get('architecture')!r}, expected 'jump_relu'")
    if cfg.get("type", "sae") != "sae" or cfg.get("affine_connection"):
        raise fail(cfg_path, f"a {cfg.get('type', 'transcoder')} (llmri reads SAEs; transcoders come later)")
    file = d / "params.safetensors"
    raw = read_safetensors(file)
    w = {("W_" + k[2:] if k in ("w_enc", "w_dec") else k): v for k, v in raw.items()}
    if "threshold" not in w:
        raise fail(file, "no threshold weight (Gemma Scope 2 SAEs are JumpReLU)")
    width = cfg.get("width")
    check_weights(file, w, d_sae=width if isinstance(width, int) else None)
    return _make(d, "gemma_scope_2", w, cfg.get("hf_hook_point_in"), architecture="jumprelu",
                 apply_b_dec_to_input=False, model_name=cfg.get("model_name"))  # fmt: skip


@SAE_FORMATS.register("sparsify")
def load_sparsify(path: Path, allow_pickle: bool) -> SAE:
    cfg_path, file = path / "cfg.json", path / "sae.safetensors"
    cfg = read_json(cfg_path)
    if cfg.get("transcode"):
        raise fail(cfg_path, "a transcoder (transcode: true); llmri reads SAEs, transcoders come later")
    if cfg.get("skip_connection"):
        raise fail(cfg_path, "has a skip connection (W_skip), which llmri does not apply")
    if cfg.get("activation", "topk") != "topk":
        raise fail(cfg_path, f"activation {cfg.get('activation')!r}; llmri runs sparsify's topk")
    k, d_in = cfg.get("k"), cfg.get("d_in")
    if not isinstance(k, int) or not isinstance(d_in, int):
        raise fail(cfg_path, "needs integer k and d_in")
    raw = read_safetensors(file)
    if "encoder.weight" not in raw:
        raise fail(file, f"no encoder.weight (has: {', '.join(sorted(raw)) or 'nothing'})")
    w = {"W_enc": raw["encoder.weight"].T, "W_dec": raw.get("W_dec"), "b_dec": raw.get("b_dec")}
    w["b_enc"] = raw.get("encoder.bias")
    w = {key: v for key, v in w.items() if v is not None}
    check_weights(file, w, d_in=d_in, d_sae=cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    return _make(path, "sparsify", w, path.name, architecture="topk", k=k, apply_b_dec_to_input=True)


@SAE_FORMATS.register("pickle")
def load_pickle(path: Path, allow_pickle: bool) -> SAE:
    w = read_pickle(path, allow_pickle)
    check_weights(path, w)
    cfg = read_json(path.parent / "cfg.json") if (path.parent / "cfg.json").is_file() else {}
    meta = cfg.get("metadata")
    hook = (meta.get("hook_name") if isinstance(meta, dict) else None) or cfg.get("hook_name") or cfg.get("hook_point")
    arch = "jumprelu" if "threshold" in w else "relu"
    return _make(
        path, "pickle", w, hook, architecture=arch, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True))
    )


_CT_FILE = re.compile(r"^layer_(\d+)\.safetensors$")


@SAE_FORMATS.register("circuit_tracer")
def load_circuit_tracer(path: Path, allow_pickle: bool) -> SAE:
    """A circuit-tracer per-layer transcoder, ``layer_L.safetensors``: ``W_enc`` ``[d_tc, d_model]``
    (``F.linear``'s layout), ``W_dec`` ``[d_tc, d_model]``, ``b_enc``, ``b_dec``, and
    ``activation_function.threshold`` (JumpReLU), ``k`` (TopK) or neither (ReLU); ``W_skip`` only
    changes the decoded output. It reads layer L's MLP input (no ``b_dec`` subtracted) and writes
    its output: :attr:`SAE.transcoder`."""
    m = _CT_FILE.match(path.name)
    if path.is_dir() or m is None:
        raise fail(path, "a circuit-tracer transcoder is one layer's file, layer_L.safetensors")
    w = read_safetensors(path)
    threshold = w.pop("activation_function.threshold", None)
    k_t = w.pop("k", None)
    skip = w.pop("W_skip", None)
    if "W_enc" in w:
        w["W_enc"] = w["W_enc"].T.contiguous()
    if threshold is not None:
        w["threshold"] = threshold
    check_weights(path, w)
    k = int(k_t.reshape(()).item()) if k_t is not None else None
    arch = "jumprelu" if threshold is not None else "topk" if k is not None else "relu"
    sae = _make(path, "circuit_tracer", w, None, architecture=arch, k=k, apply_b_dec_to_input=False,
                name=f"transcoder_layer_{m.group(1)}", transcoder=True)  # fmt: skip
    sae.layer, sae.signal = int(m.group(1)), "mlp"
    if skip is not None:
        sae.meta["skip_connection"] = True
    return sae


def detect(path: Path) -> tuple[str, Path]:
    """``(format, the path its loader reads)`` of a directory or file; one line when it is none."""
    if not path.exists():
        raise fail(path, "no such file or directory")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return "pickle", path
        by_name = {"params.npz": "gemma_scope", "sae_weights.safetensors": "saelens", "cfg.json": "", "config.json": ""}
        if path.suffix == ".npz":
            return "gemma_scope", path
        if _CT_FILE.match(path.name):
            return "circuit_tracer", path
        if path.name not in by_name and path.name not in ("params.safetensors", "sae.safetensors"):
            raise fail(
                path, "not an SAE file (params.npz, params.safetensors, sae_weights.safetensors, sae.safetensors)"
            )
        path = path.parent
    if (path / "sae_weights.safetensors").is_file():
        return "saelens", path
    if (path / "sae.safetensors").is_file():
        return "sparsify", path
    if (path / "params.safetensors").is_file():
        return "gemma_scope_2", path
    if (path / "params.npz").is_file():
        return "gemma_scope", path / "params.npz"
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return "pickle", pickles[0]
    raise fail(
        path,
        "not an SAE: no sae_weights.safetensors (SAELens), params.npz (Gemma Scope), "
        "params.safetensors (Gemma Scope 2) or sae.safetensors (sparsify)",
    )


def load_sae(
    path: str | Path,
    *,
    layer: int | None = None,
    signal: str | None = None,
    name: str | None = None,
    format: str | None = None,  # noqa: A002 - the user's word for it
    allow_pickle: bool = False,
    labels: str | Path | Mapping[Any, str] | None = None,
) -> SAE:
    """Read a sparse autoencoder from disk into one :class:`SAE`, whatever its format.

    ``path``: an SAE's directory or its weights file (see the formats table in this module's doc and
    docs/sae.md); ``format`` forces a loader (``SAE_FORMATS.names()``). Which of llmri's vectors it
    reads comes from its config's hook name (``blocks.L.hook_resid_post`` -> ``resid`` L;
    ``hook_resid_pre`` of L -> ``resid`` L - 1) unless ``layer`` and ``signal`` are given, which
    override it. Pickled weights (``.pt``...) are refused unless ``allow_pickle``. Every failure is
    an :class:`~llmri.SAEError` of one line naming the file. ``labels``: the features' labels, a local
    file (Neuronpedia's export, or ``{index: text}`` JSON; :mod:`~llmri.readouts.sae.labels`) or a
    mapping (:meth:`SAE.with_labels`); a capture keeps them in the session's record of the SAE.
    """
    p = Path(path).expanduser()
    if format is not None:
        if format not in SAE_FORMATS:
            raise SAEError(f"{p}: unknown SAE format {format!r} (known: {', '.join(SAE_FORMATS.names())})")
        # the directory formats also take their weights file, as detection does
        files = ("gemma_scope", "pickle", "circuit_tracer")
        fmt, target = format, p.parent if p.is_file() and format not in files else p
    else:
        fmt, target = detect(p)
    sae = SAE_FORMATS.get(fmt)(target, allow_pickle)
    if signal is not None and signal not in SIGNALS:
        raise SAEError(f"{p}: unknown signal {signal!r} (choose from {', '.join(SIGNALS)})")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise SAEError(f"{p}: layer must be an integer >= 0, got {layer!r}")
    if layer is not None or signal is not None:
        if (layer is None and sae.layer is None) or (signal is None and sae.signal is None):
            raise SAEError(f"{p}: give both layer= and signal= (its files name no site llmri records)")
        sae.layer = sae.layer if layer is None else layer
        sae.signal = sae.signal if signal is None else signal
        sae.meta.pop("site_error", None)
    elif "site_error" in sae.meta:
        raise SAEError(f"{p}: {sae.meta['site_error']}; pass layer= and signal= if it reads one it does")
    if name is not None:
        sae.name = name
    if labels is not None:
        sae.with_labels(labels)
    return sae
