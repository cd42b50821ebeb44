"""Build the SAE reference fixtures with SAELens itself (run once, in a venv of its own).

sae-lens 6.54 needs transformer-lens < 4, which llmri's pinned TransformerLens 4.3 excludes, so SAELens
cannot sit in the test environment. This script, run where it can::

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens==6.54.12
    /tmp/saelens-venv/bin/python tests/readouts/sae_reference/make_golden.py

writes ``fixtures/`` beside it: small SAEs (d_in 64, d_sae 256, seeded random weights) of each
architecture saved by SAELens's own ``save_model`` / ``save_inference_model``, the Gemma Scope
(``params.npz``), Gemma Scope 2 (``params.safetensors`` + ``config.json``) and sparsify
(``cfg.json`` + ``sae.safetensors``) layouts, and ``golden.npz``: fixed inputs ``x`` and, per fixture,
the reference encoding ``{name}.acts`` and decoding ``{name}.recon`` of them.

The reference of each layout:
- SAELens directories: ``SAE.load_from_disk(dir).encode(x)`` / ``.decode(...)``.
- Gemma Scope / Gemma Scope 2: SAELens's own loaders (``gemma_2_sae_huggingface_loader``,
  ``gemma_3_sae_huggingface_loader``), pointed at the local files instead of the hub, then SAELens's
  JumpReLU ``encode``: ``relu(pre) * (pre > threshold)``, ``pre = x @ W_enc + b_enc`` (no b_dec
  subtracted), the formula of Gemma Scope's own tutorial for thresholds > 0.
- sparsify: sparsify's own ``SparseCoder.encode`` (EleutherAI/sparsify ``sparse_coder.py`` and
  ``fused_encoder.py``), written out in torch here because sparsify is not installed:
  ``relu((x - b_dec) @ encoder.weight.T + encoder.bias)`` then its top ``k``, decoded as
  ``acts @ W_dec + b_dec``. SAELens's ``sparsify_disk_loader`` is not used: it sets
  ``apply_b_dec_to_input = not normalize_decoder`` (sparsify itself always subtracts ``b_dec`` from
  an autoencoder's input) and transposes ``W_dec`` (stored ``[num_latents, d_in]``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import sae_lens
import torch
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.saes import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

HERE = Path(__file__).parent
OUT = HERE / "fixtures"
D_IN, D_SAE, N = 64, 256, 12
MODEL = "llmri-test-model"


def randomise(sae: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: pre-activations O(1), about half of them positive, biases nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(sae.named_parameters()):
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.6)
            elif name.startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=g) / D_IN**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def meta(hook: str) -> SAEMetadata:
    return SAEMetadata(model_name=MODEL, hook_name=hook, hook_head_index=None)


def saelens_saes() -> dict[str, tuple[SAE, str]]:
    """name -> (SAE, how it is saved)."""
    out: dict[str, tuple[SAE, str]] = {}
    out["saelens_relu"] = (
        StandardSAE(StandardSAEConfig(D_IN, D_SAE, metadata=meta("blocks.3.hook_resid_post"))),
        "model",
    )
    out["saelens_relu_nobdec"] = (
        StandardSAE(StandardSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=False, metadata=meta("blocks.2.hook_mlp_out"))),
        "model",
    )
    out["saelens_relu_layernorm"] = (
        StandardSAE(
            StandardSAEConfig(D_IN, D_SAE, normalize_activations="layer_norm", metadata=meta("blocks.4.hook_resid_pre"))
        ),
        "model",
    )
    out["saelens_relu_constnorm"] = (
        StandardSAE(
            StandardSAEConfig(
                D_IN, D_SAE, normalize_activations="constant_norm_rescale", metadata=meta("blocks.1.hook_attn_out")
            )
        ),
        "model",
    )
    out["saelens_jumprelu"] = (
        JumpReLUSAE(JumpReLUSAEConfig(D_IN, D_SAE, metadata=meta("blocks.5.hook_resid_post"))),
        "model",
    )
    out["saelens_topk"] = (TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=8, metadata=meta("blocks.3.hook_resid_post"))), "model")
    out["saelens_topk_rescaled"] = (
        TopKSAE(
            TopKSAEConfig(D_IN, D_SAE, k=8, rescale_acts_by_decoder_norm=True, metadata=meta("blocks.3.hook_mlp_out"))
        ),
        "model",
    )
    btk = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(D_IN, D_SAE, k=8, metadata=meta("blocks.6.hook_resid_post")))
    out["saelens_batchtopk"] = (btk, "inference")
    return out


def saelens_reference(name: str, sae: SAE, how: str, x: torch.Tensor, golden: dict[str, np.ndarray]) -> None:
    d = OUT / name
    if how == "inference":
        # BatchTopK: a learned global threshold; SAELens saves the inference model as JumpReLU.
        with torch.no_grad():
            sae.topk_threshold.fill_(0.35)  # type: ignore[union-attr]
        sae.save_inference_model(d)  # type: ignore[attr-defined]
        # ...and llmri also reads the training checkpoint (architecture batchtopk, topk_threshold)
        sae.save_model(OUT / f"{name}_checkpoint")
    else:
        sae.save_model(d)
    loaded = SAE.load_from_disk(d)
    with torch.no_grad():
        acts = loaded.encode(x)
        golden[f"{name}.acts"] = acts.numpy()
        golden[f"{name}.recon"] = loaded.decode(acts).numpy()
    if how == "inference":
        golden[f"{name}_checkpoint.acts"] = golden[f"{name}.acts"]
        golden[f"{name}_checkpoint.recon"] = golden[f"{name}.recon"]


def tensors(seed: int, threshold: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.2,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,
        "b_dec": torch.randn(D_IN, generator=g) * 0.2,
    }
    if threshold:
        t["threshold"] = torch.rand(D_SAE, generator=g) * 0.6
    return t


def local_hub(root: Path):  # noqa: ANN201
    def download(repo_id: str, filename: str, subfolder: str | None = None, **_: object) -> str:
        path = root / repo_id.split("/")[-1] / (subfolder or "") / filename
        if not path.exists():
            raise loaders.EntryNotFoundError(str(path))
        return str(path)

    return download


def from_loader(loader, repo_id: str, folder: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    cfg, state, _ = loader(
        repo_id, folder, device="cpu", force_download=False, cfg_overrides={"d_in": D_IN, "d_sae": D_SAE}
    )
    cfg = loaders.handle_config_defaulting(cfg)
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state, assign=True)
    with torch.no_grad():
        acts = sae.encode(x)
        return acts.numpy(), sae.decode(acts).numpy()


def gemma_scope(x: torch.Tensor, golden: dict[str, np.ndarray]) -> None:
    root = OUT / "gemma_scope"
    folder = "layer_5/width_16k/average_l0_10"
    d = root / "gemma-scope-2b-pt-res" / folder
    d.mkdir(parents=True)
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in tensors(101).items()})
    with mock.patch.object(loaders, "hf_hub_download", local_hub(root)):
        acts, recon = from_loader(loaders.gemma_2_sae_huggingface_loader, "google/gemma-scope-2b-pt-res", folder, x)
    golden["gemma_scope.acts"], golden["gemma_scope.recon"] = acts, recon


def gemma_scope_2(x: torch.Tensor, golden: dict[str, np.ndarray]) -> None:
    root = OUT / "gemma_scope_2"
    folder = "resid_post/layer_7_width_16k_l0_small"
    d = root / "gemma-scope-2-1b-pt" / folder
    d.mkdir(parents=True)
    t = {k.lower(): v for k, v in tensors(202).items()}
    save_file(t, d / "params.safetensors")
    cfg = {
        "width": D_SAE,
        "model_name": "google/gemma-3-1b-pt",
        "architecture": "jump_relu",
        "l0": 10,
        "affine_connection": False,
        "hf_hook_point_in": "model.layers.7.output",
        "hf_hook_point_out": "model.layers.7.output",
        "type": "sae",
    }
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    shapes = {k: list(v.shape) for k, v in t.items()}
    with (
        mock.patch.object(loaders, "hf_hub_download", local_hub(root)),
        mock.patch.object(loaders, "get_safetensors_tensor_shapes", lambda *_: shapes),
    ):
        acts, recon = from_loader(loaders.gemma_3_sae_huggingface_loader, "google/gemma-scope-2-1b-pt", folder, x)
    golden["gemma_scope_2.acts"], golden["gemma_scope_2.recon"] = acts, recon


def sparsify(x: torch.Tensor, golden: dict[str, np.ndarray]) -> None:
    d = OUT / "sparsify" / "layers.4"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(303)
    k = 8
    w = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.2,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,
        "b_dec": torch.randn(D_IN, generator=g) * 0.2,
    }
    save_file(w, d / "sae.safetensors")
    cfg = {
        "activation": "topk",
        "expansion_factor": D_SAE // D_IN,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    (d / "cfg.json").write_text(json.dumps(cfg))
    # sparsify's SparseCoder.encode (fused_encoder) and decode, on these weights
    pre = torch.relu(torch.nn.functional.linear(x - w["b_dec"], w["encoder.weight"], w["encoder.bias"]))
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter_(-1, idx, vals)
    golden["sparsify.acts"] = acts.numpy()
    golden["sparsify.recon"] = (acts @ w["W_dec"] + w["b_dec"]).numpy()


def main() -> None:
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(7)) * 1.5 + 0.3
    golden: dict[str, np.ndarray] = {"x": x.numpy()}
    for i, (name, (sae, how)) in enumerate(saelens_saes().items()):
        randomise(sae, 1000 + i)
        saelens_reference(name, sae, how, x, golden)
    gemma_scope(x, golden)
    gemma_scope_2(x, golden)
    sparsify(x, golden)
    np.savez_compressed(OUT / "golden.npz", **golden)
    (OUT / "VERSION").write_text(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}\n")
    for key in sorted(golden):
        if key.endswith(".acts"):
            a = golden[key]
            print(f"{key:40s} L0 mean {np.count_nonzero(a, axis=-1).mean():6.1f}")


if __name__ == "__main__":
    main()
