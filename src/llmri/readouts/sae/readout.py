"""A step's SAE features: for each SAE, each new position's top-k features, L0 and reconstruction error,
from the full vectors before any reduction. Pure: tensors in, numpy rows out (capture stores them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...frame import FeatureRow
from .model import SAE

#: Features kept per position and SAE.
SAE_TOP_K = 32


@dataclass
class SAERows:
    """One SAE's readout of ``n`` consecutive positions (numpy).

    ``ids`` int32 and ``values`` float16 ``[n, k]``: the strongest features, strongest first (a
    token with fewer than ``k`` active features has zeros at the end); ``l0`` int32 ``[n]``: how
    many features are active (> 0); ``fvu`` and ``cosine`` float32 ``[n]``: the reconstruction's
    fraction of variance unexplained (``|x - x̂|² / |x|²``) and cosine with ``x``.
    """

    ids: np.ndarray
    values: np.ndarray
    l0: np.ndarray
    fvu: np.ndarray
    cosine: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self) -> list[FeatureRow]:
        """One :class:`~llmri.frame.FeatureRow` per position (views of these arrays)."""
        l0, fvu, cos = self.l0.tolist(), self.fvu.tolist(), self.cosine.tolist()
        return [FeatureRow(self.ids[j], self.values[j], l0[j], fvu[j], cos[j]) for j in range(len(self))]


def sae_readout(saes: Sequence[SAE], acts: Mapping[str, Any], *, k: int = SAE_TOP_K) -> dict[str, SAERows]:
    """``{sae.name: SAERows}`` of one step. ``acts``: ``{signal: Tensor[n, layers, d_model]}``
    (:attr:`llmri.backends.base.Step.acts`); each SAE reads ``acts[sae.signal][:, sae.layer]`` on
    its device, one matmul per SAE (``SAE.check_model`` has checked the sites before the run)."""
    import torch

    if k < 1:
        raise ValueError(f"sae_k must be >= 1, got {k}")
    out: dict[str, SAERows] = {}
    with torch.inference_mode():
        for sae in saes:
            if sae.signal is None or sae.layer is None or sae.signal not in acts:
                raise ValueError(f"SAE {sae.name} reads {sae.signal} {sae.layer}, which this step did not record")
            x = acts[sae.signal][:, sae.layer]
            feats, rec = sae.encode_decode(x)
            values, ids = feats.topk(min(k, sae.d_sae), dim=-1)
            xf = x.to(torch.float32)
            fvu = (xf - rec).pow(2).sum(-1) / xf.pow(2).sum(-1).clamp_min(1e-30)
            cos = torch.nn.functional.cosine_similarity(xf, rec, dim=-1)
            if sae.transcoder:  # it decodes the MLP's output, not x: no reconstruction error of x
                fvu, cos = torch.full_like(fvu, float("nan")), torch.full_like(cos, float("nan"))
            out[sae.name] = SAERows(
                ids=ids.to(torch.int32).cpu().numpy(),
                values=values.to(torch.float16).cpu().numpy(),
                l0=(feats > 0).sum(-1).to(torch.int32).cpu().numpy(),
                fvu=fvu.cpu().numpy().astype(np.float32),
                cosine=cos.cpu().numpy().astype(np.float32),
            )
    return out
