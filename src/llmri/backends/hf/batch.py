"""Batched forwards on the ``hf`` backend: several prompts at once, left-padded, with the attention
mask and each row's own position ids, the KV cache kept; rows leave the cache as they finish.

The capture of each row is the batch-1 capture's: the same hooks' modules (the backend's layout),
read as ``[batch, n, d_model]``. Padding positions are never returned (the caller slices them off
with :attr:`BatchRunner.pad`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from ..._errors import CaptureError
from .backend import HFBackend, eager_attention
from .hooks import eval_mode, hooked
from .layout import describe, residual_arg


@dataclass
class BatchStep:
    """One batched forward over ``n`` new positions of ``b`` rows.

    ``acts``: ``{signal: Tensor[b, n, layers, d_model]}``; ``logits``: float32 ``[b, n, vocab]``;
    ``attn_weights``: per layer float32 ``[b, heads, n, keys]`` (keys: every position in the cache,
    padding included: row ``r``'s own keys start at ``pad[r]``) or ``None`` for a layer without
    attention; ``None`` without ``attention=True``."""

    acts: dict[str, Any]
    logits: Any
    attn_weights: list[Any] | None


def _pick(out: Any, b: int, n: int, d: int) -> Any:
    """The ``[b, n, d]`` tensor in a module's output (``[b * n, d]`` gets its shape back)."""
    import torch

    if isinstance(out, torch.Tensor):
        items: Any = (out,)
    elif isinstance(out, (tuple, list)):
        items = out
    elif callable(getattr(out, "to_tuple", None)):
        items = out.to_tuple()
    else:
        return None
    for t in items:
        if isinstance(t, torch.Tensor):
            if t.dim() == 3 and tuple(t.shape) == (b, n, d):
                return t
            if t.dim() == 2 and tuple(t.shape) == (b * n, d):
                return t.view(b, n, d)
    return None


class BatchRunner:
    """Batched forwards of one :class:`~llmri.backends.hf.backend.HFBackend`.

    :meth:`prefill` runs left-padded prompts; :meth:`decode` one new token per remaining row;
    :meth:`keep` drops finished rows from the cache and the mask. Interventions are not applied
    here (a batch refuses them: the caller runs those prompts one by one).
    """

    def __init__(self, backend: HFBackend, layers: list[int] | None = None) -> None:
        if not isinstance(backend, HFBackend):
            raise CaptureError(f"batched capture needs the hf backend, not {getattr(backend, 'name', '?')!r}")
        if not backend._cache_kw:
            raise CaptureError(f"hf: {type(backend.model).__name__} keeps no KV cache: capture it with batch_size=1")
        self.backend = backend
        #: the layers recorded (``layers=``), in order; ``None``: every layer
        self.layers = list(range(backend.n_layers)) if layers is None else list(layers)
        self.cache: Any = None
        self.mask: Any = None  # [b, keys] 1 for a real position
        self.lengths: Any = None  # [b] real positions so far
        self.pad: list[int] = []  # left padding per row

    def prefill(self, prompts: list[list[int]], *, attention: bool = False) -> BatchStep:
        """Run each prompt (token ids) left-padded to the longest; a fresh cache."""
        import torch

        t = max(len(p) for p in prompts)
        pad_id = 0
        ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), t), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, t - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, t - len(p) :] = 1
        self.pad = [t - len(p) for p in prompts]
        self.lengths = mask.sum(1)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        self.mask = mask
        self.cache = self.backend._new_cache()
        return self._forward(ids, pos, attention)

    def decode(self, tokens: list[int], *, attention: bool = False) -> BatchStep:
        """One new token per row still in the batch (in row order)."""
        import torch

        ids = torch.tensor(tokens, dtype=torch.long)[:, None]
        pos = self.lengths[:, None].clone()
        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=torch.long)], 1)
        self.lengths = self.lengths + 1
        return self._forward(ids, pos, attention)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices into the current batch, in order) in the cache and the mask."""
        import torch

        if len(rows) == len(self.pad):
            return
        idx = torch.tensor(rows, dtype=torch.long)
        self.cache.batch_select_indices(idx.to(self.backend.loaded.device))
        self.mask, self.lengths = self.mask[idx], self.lengths[idx]
        self.pad = [self.pad[r] for r in rows]  # the keys stay aligned: a row's padding stays its own

    def _forward(self, ids: Any, pos: Any, attention: bool) -> BatchStep:
        import torch

        be = self.backend
        b, n, d = int(ids.shape[0]), int(ids.shape[1]), be.d_model
        n_layers = len(self.layers)
        bufs: dict[str, list[Any]] = {s: [None] * n_layers for s in be.signals}
        weights: list[Any] = [None] * n_layers

        def make(sig: str, i: int, path: str, residual: str | None):  # noqa: ANN202
            slot = bufs[sig]

            def hook(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
                t = _pick(out, b, n, d)
                if t is None:
                    raise CaptureError(
                        f"hf: {path} ({type(mod).__name__}) returned {describe(out)}, not the [{b}, {n}, {d}] "
                        f"vector the {sig!r} signal reads in a batch"
                    )
                if residual is not None:
                    t = t - residual_arg(mod, residual, args, kwargs).reshape(t.shape)
                slot[i] = t.clone()

            return hook

        def keep_weights(i: int):  # noqa: ANN202
            def hook(_mod: Any, _args: Any, _kwargs: Any, out: Any) -> None:
                w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if not isinstance(w, torch.Tensor) or w.dim() != 4:
                    raise CaptureError(f"hf: the attention of layer {i} returned no weights even with eager attention")
                weights[i] = w.float()

            return hook

        hooks: list[tuple[Any, Any]] = []
        for sig, pts in be.layout.points.items():
            if sig in bufs:
                chosen = [(i, pts[layer]) for i, layer in enumerate(self.layers)]
                hooks += [(pt.module, make(sig, i, pt.path, pt.residual)) for i, pt in chosen if pt is not None]
        if attention:
            if all(m is None for m in be._attn_mods):
                raise CaptureError(f"hf: {type(be.model).__name__} has no attention modules to read weights from")
            mods = [(i, be._attn_mods[layer]) for i, layer in enumerate(self.layers)]
            hooks += [(mod, keep_weights(i)) for i, mod in mods if mod is not None]
        dev = be.loaded.device
        kw: dict[str, Any] = {be._cache_kw: self.cache, "use_cache": True}
        eager = eager_attention(be.model, be._eager_memo) if attention else nullcontext()
        with hooked(hooks), torch.inference_mode(), eval_mode(be.model, be._modules), eager:
            out = be.model(input_ids=ids.to(dev), attention_mask=self.mask.to(dev), position_ids=pos.to(dev), **kw)
        new_cache = getattr(out, be._cache_kw, None) or getattr(out, "past_key_values", None)
        if new_cache is not None:
            self.cache = new_cache
        zeros = None
        for s, bl in bufs.items():
            for i, t in enumerate(bl):
                if t is None:
                    pt = be.layout.points[s][self.layers[i]]
                    if pt is not None:
                        raise CaptureError(f"hf: the forward did not run {pt.path} (signal {s!r})")
                    ref = next(x for x in bl if x is not None)
                    zeros = zeros if zeros is not None and zeros.dtype == ref.dtype else torch.zeros_like(ref)
                    bl[i] = zeros
        acts = {s: torch.stack(bl, dim=2) for s, bl in bufs.items()}  # [b, n, L, d]
        return BatchStep(acts=acts, logits=out.logits.float(), attn_weights=weights if attention else None)
