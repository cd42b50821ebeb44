"""Activation patching (causal tracing) as one labelled array (STYLE 20): for each signal, layer and
position, the corrupt prompt run with that one output replaced by the clean prompt's, scored by a
metric on the last position's logits. The forwards are batched: every (layer, position) cell of a
signal is a row of a batch of the corrupt prompt, patched by one hook per layer, ``batch`` rows a
forward (30 layers x 20 positions x 3 signals = 1800 cells in ~30 forwards of 64 rows)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CaptureError
from .records import check_layers, check_signal

METRICS = ("logit_diff",)


@dataclass(frozen=True)
class PatchingResult:
    """``values`` float32 ``[signals, layers, positions]``: the metric of the corrupt run with that
    cell patched from the clean run; ``clean`` / ``corrupt``: the metric of each run unpatched."""

    values: np.ndarray
    signals: tuple[str, ...]
    layers: tuple[int, ...]
    tokens: tuple[str, ...]
    clean: float
    corrupt: float
    metric: str
    targets: tuple[str, ...]

    def normalized(self) -> np.ndarray:
        """``(values - corrupt) / (clean - corrupt)``: 1 where the patch restores the clean run."""
        gap = self.clean - self.corrupt
        out: np.ndarray = (self.values - self.corrupt) / (gap if gap != 0 else 1.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a session's meta holds it: ``meta["patching"]``)."""
        return {
            "values": self.values.round(6).tolist(),
            "signals": list(self.signals),
            "layers": list(self.layers),
            "tokens": list(self.tokens),
            "clean": self.clean,
            "corrupt": self.corrupt,
            "metric": self.metric,
            "targets": list(self.targets),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchingResult:
        return cls(
            np.asarray(d["values"], dtype=np.float32),
            tuple(d["signals"]),
            tuple(d["layers"]),
            tuple(d["tokens"]),
            float(d["clean"]),
            float(d["corrupt"]),
            str(d["metric"]),
            tuple(d["targets"]),
        )

    @classmethod
    def of(cls, session: Any) -> PatchingResult:
        """The sweep a session stores (the corrupt run of :func:`patching` with ``store=``)."""
        d = session.meta.get("patching")
        if not isinstance(d, Mapping):
            raise CaptureError(f"session {session.id} holds no patching sweep")
        return cls.from_dict(d)

    def to_xarray(self) -> Any:
        """An ``xarray.DataArray`` ``(signal, layer, position)`` with the tokens as a coordinate."""
        import xarray as xr

        return xr.DataArray(
            self.values,
            dims=("signal", "layer", "position"),
            coords={"signal": list(self.signals), "layer": list(self.layers), "token": ("position", list(self.tokens))},
            name=self.metric,
            attrs={"clean": self.clean, "corrupt": self.corrupt, "targets": list(self.targets)},
        )


def _one_token(tok: Any, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CaptureError(f"target {text!r} is {len(ids)} tokens; a logit difference needs one token each")
    return int(ids[0])


def _metric(metric: Any, tok: Any, targets: Sequence[str]) -> tuple[str, Callable[[Any], Any]]:
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if metric != "logit_diff":
        raise CaptureError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)} or pass a function)")
    if len(targets) != 2:
        raise CaptureError(f"logit_diff needs two targets (the clean answer, the corrupt one), got {list(targets)}")
    a, b = (_one_token(tok, t) for t in targets)
    return metric, lambda logits: logits[:, a] - logits[:, b]


def sweep(
    model: Any,
    clean: str,
    corrupt: str,
    metric: Any = "logit_diff",
    targets: Sequence[str] = (" Paris", " Rome"),
    signals: Sequence[str] = ("resid", "attn", "mlp"),
    *,
    layers: Any = None,
    batch: int = 64,
) -> PatchingResult:
    """The layer x position patching sweep of ``corrupt`` from ``clean`` (prompts of equal length).

    Parameters
    ----------
    model:
        A loaded model (:func:`llmri.load_model` or :func:`llmri.wrap`); run by the hf backend.
    clean, corrupt:
        Raw-text prompts of the same token count.
    metric:
        ``"logit_diff"``: ``logit(targets[0]) - logit(targets[1])`` at the last position; or a
        function of the last position's logits ``[rows, vocab]`` returning ``[rows]``.
    signals, layers:
        What is patched (default: every layer of resid, attn and mlp).
    batch:
        Patched rows per forward.
    """
    import torch

    from ..backends.hf import HFBackend
    from ..backends.hf.hooks import hooked

    sigs = tuple(check_signal(s) for s in signals)
    tok = model.tokenizer
    name, score = _metric(metric, tok, targets)
    ids_c = [int(i) for i in tok(clean, add_special_tokens=True)["input_ids"]]
    ids_x = [int(i) for i in tok(corrupt, add_special_tokens=True)["input_ids"]]
    if len(ids_c) != len(ids_x):
        raise CaptureError(f"clean and corrupt prompts must have the same length: {len(ids_c)} and {len(ids_x)} tokens")
    be = HFBackend(model, list(sigs))
    n_layers, n = be.n_layers, len(ids_x)
    lay = tuple(range(n_layers)) if layers is None else check_layers(layers)
    if max(lay) >= n_layers:
        raise CaptureError(f"layer {max(lay)} is out of range: the model has {n_layers} layers")
    modules: dict[str, dict[int, Any]] = {s: {} for s in sigs}
    for s in sigs:
        for layer in lay:
            pt = be.layout.points[s][layer]
            if pt is None or pt.residual is not None:
                raise CaptureError(f"patching {s!r}: this architecture's module does not output {s} alone; use resid")
            modules[s][layer] = pt.module
    clean_step = be.step(torch.tensor([ids_c]))
    clean_acts = {s: clean_step.acts[s] for s in sigs}  # [n, L, d]
    corrupt_logits = be.step(torch.tensor([ids_x])).logits
    net, device = be.model, model.device
    x = torch.tensor([ids_x], device=device)
    values = np.zeros((len(sigs), len(lay), n), dtype=np.float32)
    cells = [(li, p) for li in range(len(lay)) for p in range(n)]
    for si, s in enumerate(sigs):
        for c0 in range(0, len(cells), batch):
            chunk = cells[c0 : c0 + batch]
            hooks = []
            for li, layer in enumerate(lay):
                rows = [r for r, (cl, _) in enumerate(chunk) if cl == li]
                if rows:
                    pos = [chunk[r][1] for r in rows]
                    vals = clean_acts[s][pos, layer]
                    hooks.append((modules[s][layer], _replace(rows, pos, vals)))
            with hooked(hooks), torch.inference_mode():
                out = net(input_ids=x.expand(len(chunk), -1), use_cache=False)
            v = score(out.logits[:, -1].float()).cpu().numpy()
            for r, (li, p) in enumerate(chunk):
                values[si, li, p] = v[r]
    return PatchingResult(
        values,
        sigs,
        lay,
        tuple(tok.decode([i]) for i in ids_x),
        float(score(clean_step.logits[-1:].float())[0]),
        float(score(corrupt_logits[-1:].float())[0]),
        name,
        tuple(targets),
    )


def _replace(rows: list[int], pos: list[int], vals: Any) -> Callable[..., Any]:
    """A forward hook setting ``out[rows[k], pos[k]] = vals[k]`` in a module's output ``[B, n, d]``."""

    def hook(_mod: Any, _args: Any, _kwargs: Any, out: Any) -> Any:
        t = out[0] if isinstance(out, tuple) else out
        t = t.clone()
        t[rows, pos] = vals.to(device=t.device, dtype=t.dtype)
        return (t, *out[1:]) if isinstance(out, tuple) else t

    return hook
