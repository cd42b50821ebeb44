"""A small TopK SAE trained from vectors llmri captured, and any SAE written as a SAELens directory
(``cfg.json`` + ``sae_weights.safetensors``) that :func:`~llmri.readouts.sae.load_sae` reads back.

A short training loop of llmri's own (SAELens's trainer cannot sit in llmri's environment: sae-lens
requires transformer-lens < 4): TopK activations (Gao et al. 2024), decoder rows kept at unit norm,
Adam on the reconstruction's mean squared error. Meant for the bundled model's demo SAE and for
users' first SAEs on their own captures; it trains in seconds on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .model import SAE


def train_sae(
    vectors: Any,
    *,
    d_sae: int = 128,
    k: int = 8,
    steps: int = 800,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    layer: int | None = None,
    signal: str | None = "resid",
    name: str = "sae",
    model_name: str | None = None,
) -> SAE:
    """A TopK SAE of ``d_sae`` features, ``k`` active per vector, trained on ``vectors``
    ``[n, d_in]`` (float32, e.g. a capture's ``neurons`` frames, one vector per token).

    The vectors are scaled to unit mean norm for training and the scale is folded back into the
    weights, so the SAE reads the vectors as they are. ``b_dec`` starts at their mean and the
    encoder at the decoder's transpose; dead features are not resampled (short runs on small data).
    Deterministic for a given ``seed`` on one machine.
    """
    import torch

    x = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"train_sae needs vectors [n >= 2, d_in], got shape {tuple(x.shape)}")
    g = torch.Generator().manual_seed(seed)
    scale = float(x.norm(dim=-1).mean())
    xs = x / scale
    d_in = x.shape[1]
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_dec": w_dec.clone().requires_grad_(True),
        "W_enc": w_dec.T.clone().requires_grad_(True),
        "b_enc": torch.zeros(d_sae, requires_grad=True),
        "b_dec": xs.mean(0).clone().requires_grad_(True),
    }
    opt = torch.optim.Adam(params.values(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            batch = xs[torch.randint(0, xs.shape[0], (min(batch_size, xs.shape[0]),), generator=g)]
            pre = (batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            values, ids = pre.topk(k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, ids, torch.relu(values))
            rec = acts @ params["W_dec"] + params["b_dec"]
            loss = (rec - batch).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call,unused-ignore]  # untyped in the library
            opt.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    p = {key: v.detach() for key, v in params.items()}
    # fold the training scale back: the SAE reads x, not x / scale
    return SAE(
        W_enc=(p["W_enc"] / scale).contiguous(),
        b_enc=p["b_enc"].clone(),
        W_dec=(p["W_dec"] * scale).contiguous(),
        b_dec=p["b_dec"] * scale,
        architecture="topk",
        k=k,
        name=name,
        source_format="llmri",
        path="",
        layer=layer,
        signal=signal,
        hook_name=f"blocks.{layer}.hook_resid_post" if layer is not None and signal == "resid" else None,
        model_name=model_name,
    )


_ARCH_OUT = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "jumprelu"}
_HOOK_OUT = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def save_sae(sae: SAE, path: str | Path, *, labels: Mapping[int, str] | None = None) -> Path:
    """Write ``sae`` as a SAELens directory at ``path`` (``cfg.json`` + ``sae_weights.safetensors``,
    SAELens 6's layout; a batchtopk SAE as the JumpReLU it runs as), and, with ``labels`` or the SAE's
    own, ``labels.json`` in Neuronpedia's export shape (``[{"index", "description"}]``). Returns ``path``."""
    import torch
    from safetensors.torch import save_file

    if sae.normalize_activations != "none":
        raise ValueError(
            f"save_sae writes SAEs without an input normalisation, {sae.name} has {sae.normalize_activations}"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    hook = sae.hook_name
    if hook is None and sae.signal is not None and sae.layer is not None:
        hook = f"blocks.{sae.layer}.{_HOOK_OUT[sae.signal]}"
    cfg: dict[str, Any] = {
        "architecture": _ARCH_OUT[sae.architecture],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": hook, "model_name": sae.model_name, "sae_lens_training_version": None},
    }
    if sae.architecture == "topk":
        cfg["k"] = int(sae.k or 0)
        cfg["rescale_acts_by_decoder_norm"] = False
    if sae.architecture == "batchtopk":
        cfg["metadata"]["training_architecture"] = "batchtopk"
    weights = {
        name: getattr(sae, name).detach().to("cpu", torch.float32).contiguous()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    if sae.threshold is not None:
        weights["threshold"] = sae.threshold.detach().to("cpu", torch.float32).contiguous()
    save_file(weights, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    labels = dict(labels) if labels is not None else sae.labels
    if labels:
        rows = [{"index": str(i), "description": t} for i, t in sorted(labels.items())]
        (out / "labels.json").write_text(json.dumps(rows, indent=0, ensure_ascii=False), encoding="utf-8")
    return out


def top_token_labels(acts: Any, tokens: Sequence[str], *, per_feature: int = 5, min_count: int = 1) -> dict[int, str]:
    """Labels from the tokens each feature fires on most: ``acts`` ``[n, d_sae]`` (the features of
    ``n`` tokens whose texts are ``tokens``); a feature's label lists its ``per_feature`` strongest
    distinct tokens (``'the', ' of'``), a feature that fired on fewer than ``min_count`` tokens gets none."""
    import torch

    a = torch.as_tensor(acts, dtype=torch.float32)
    out: dict[int, str] = {}
    for f in range(a.shape[1]):
        col = a[:, f]
        fired = int((col > 0).sum())
        if fired < min_count:
            continue
        seen: list[str] = []
        for i in col.argsort(descending=True).tolist():
            if col[i] <= 0 or len(seen) >= per_feature:
                break
            text = tokens[i]
            if text.strip() and text not in seen:
                seen.append(text)
        if seen:
            out[f] = ", ".join(repr(t) for t in seen)
    return out
