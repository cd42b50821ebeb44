"""The frames of one decode step: tiles, statistics and tokens from a step's full vectors.

Split in two so that the next forward never waits for a frame's host work:

* :meth:`StepFrames.launch` runs as soon as a step's forward has returned: the token texts (the
  stop conditions need them before the next forward), the reducer, the norms and sparsity of every
  signal at once, the token statistics, all as tensor operations on the model's device; on CUDA
  they are only queued, and their results come back in one copy, queued too, into pinned host
  memory (no ``.item()``, no per-layer synchronisation).
* :meth:`StepFrames.finish` builds the :class:`~llmri.frame.Frame` objects from those results on
  the host. The capture stream calls it *after* the next step's forward has been queued where
  :attr:`Launched.deferred` is true, so on a GPU the Python work of frame ``t`` runs while the GPU
  computes forward ``t + 1``. On the CPU the forward is synchronous: the two halves run back to
  back. A frame thread can do the tensor work of frame ``t`` during forward ``t + 1``: on by
  default only where the backend says it pays (:attr:`~llmri.backends.base.Backend.frame_thread`:
  llama.cpp with its compiled eval callback, whose ``llama_decode`` holds no GIL);
  ``LLMRI_FRAME_THREAD=1`` / ``0`` forces it. Elsewhere it was slower (docs/benchmarks.md): where
  torch's threads take every core it takes cores from them, and llama.cpp's Python eval callback
  needs the GIL at every graph node, which the frame thread's work holds.

The values are the same either way (the same operations on the same tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frame import FRAME_NUMPY, TOP_K, Frame, Token
from ..readouts.lens import EXP_FLOOR
from ..reducers.base import Reducer
from .decode import Detokenizer, Positions
from .precision import OverflowCounter, check_frame_dtype, count_overflow

#: Devices whose kernels run asynchronously to the Python thread that queues them.
ASYNC_DEVICES = ("cuda", "mps", "xpu")


def hoyer_sparsity(l1: Any, l2: Any, d: int) -> Any:
    """Hoyer's measure per vector from its L1 and L2 norms, in [0, 1]: 0 for equal magnitudes,
    1 for a single non-zero."""
    return ((d**0.5 - l1 / l2.clamp_min(1e-30)) / (d**0.5 - 1)).clamp(0, 1)


def token_stats_tensors(pred_logits: Any, ids: Any) -> tuple[Any, Any, Any, Any]:
    """Per row of ``pred_logits`` ``[n, vocab]``: log p of ``ids[row]`` ``[n]``, the entropy
    (nats) ``[n]``, and the top-k ids ``[n, k]`` and probabilities ``[n, k]``, as tensors on the
    logits' device; NaN rows (position 0) give NaNs. ``ids``: a list, or a long Tensor on that device.

    One exp pass: with l = logits - max, e = exp(l), z = sum(e): log p(i) = l[i] - log z,
    entropy = log z - (e . l) / z, top-k probabilities = exp(top-k of l - log z). ``l`` is clamped
    at :data:`~llmri.readouts.lens.EXP_FLOOR` for the sums (masked -inf logits too, as 0 * -inf
    would be NaN; below it exp is subnormal and slow); log p uses the unclamped logit.
    """
    import torch

    logits = pred_logits.float()
    top_l, top_i = logits.topk(TOP_K, dim=-1)  # its first column is the max
    mx = top_l[:, :1]
    if not isinstance(ids, torch.Tensor):
        ids = torch.tensor(ids, dtype=torch.long, device=logits.device)
    picked = logits.gather(1, ids[:, None])[:, 0].clamp_min(-1e30) - mx[:, 0]  # a masked token: finite
    shifted = (logits - mx).clamp_min_(EXP_FLOOR)
    e = shifted.exp()
    z = e.sum(-1)
    lse = z.log()
    dot = torch.bmm(e[:, None, :], shifted[:, :, None])[:, 0, 0]  # e . l without an [n, vocab] temporary
    ent = (lse - dot / z).clamp_min(0)
    chosen = picked - lse
    top_p = (top_l - mx - lse[:, None]).exp()
    return chosen, ent, top_i, top_p


def token_stats(
    pred_logits: Any, ids: list[int]
) -> tuple[list[float], list[float], list[list[int]], list[list[float]]]:
    """:func:`token_stats_tensors` as Python lists."""
    chosen, ent, top_i, top_p = token_stats_tensors(pred_logits, ids)
    return chosen.tolist(), ent.tolist(), top_i.tolist(), top_p.tolist()


@dataclass
class Launched:
    """One step's frames on their way: what :meth:`StepFrames.launch` queued, for :meth:`StepFrames.finish`.

    ``arrays``: ``tiles`` ``[S, n, L, H, W]`` (float16, or float32 for bfloat16 and float32 frames),
    ``overflow`` int64 ``[S, L]`` (values stored as ±inf), ``norms`` / ``sparsity`` float32 ``[S, n, L]``,
    ``chosen`` / ``entropy`` float32 ``[n]``, ``top_ids`` int64 / ``top_probs`` float32 ``[n, k]``:
    numpy views of CPU tensors, or (``host`` set) the layout of one packed host buffer that an
    event says when it is filled. ``texts``: each token's text (known at launch). ``deferred``:
    whether finishing may wait until the next forward is queued (an asynchronous device).
    """

    pos: Positions
    texts: list[str]
    arrays: dict[str, Any]
    lens: list[Any]
    attention: list[Any]
    deferred: bool = False
    host: Any = None  # pinned uint8 Tensor holding every array, filled by a queued copy
    event: Any = None  # recorded after that copy
    future: Any = None  # the frame thread's (host, event, arrays), where it computes them
    sae: list[Any] | None = None  # each position's {SAE name: FeatureRow} (capture/saes.py)
    probes: list[Any] | None = None  # each position's {probe name: ProbeRow} (capture/probes.py)


#: The packed order on an asynchronous device: the widest types first, so every part stays aligned.
_PACKED = ("top_ids", "overflow", "norms", "sparsity", "chosen", "entropy", "top_probs", "tiles")
_NUMPY = {"top_ids": np.int64, "overflow": np.int64, "tiles": np.float16}


class StepFrames:
    """Builds a capture stream's frames, one step at a time (see the module's docstring).

    ``readouts``: the stream's :class:`~llmri.capture.readouts.StepReadouts` (their rows are computed
    at launch, on the calling thread: they complete the lens rows that waited for this step). ``defer``:
    ``None`` decides from the device of each step's activations; ``True`` / ``False`` force it
    (tests run the deferred path on the CPU). ``thread``: a CPU step's tensor work runs on one frame
    thread while the next forward runs (deferred); the capture stream turns it on where the backend
    says it pays or ``LLMRI_FRAME_THREAD=1`` asks (docs/benchmarks.md); :meth:`close` ends it.
    """

    def __init__(
        self,
        signals: Sequence[str],
        reducer: Reducer,
        piece: Callable[[int], str],
        readouts: Any,
        defer: bool | None = None,
        thread: bool = False,
        frame_dtype: str | None = None,
    ) -> None:
        self.frame_dtype = check_frame_dtype(frame_dtype)
        self.overflow = OverflowCounter(signals, self.frame_dtype)  # values past the frame dtype, per signal, layer
        self.signals = list(signals)
        self.reducer = reducer
        self.piece = piece
        self.readouts = readouts
        self.defer = defer
        self.thread = bool(thread)
        self._pool: Any = None

    def launch(self, pos: Positions, detok: Detokenizer) -> Launched:
        """Queue the step's frame work (on an asynchronous device nothing here waits for it; with
        :attr:`thread`, a CPU step's tensor work goes to the frame thread)."""
        texts = [detok.push(tid) for tid in pos.ids]
        device = pos.pred_logits.device
        deferred = device.type in ASYNC_DEVICES if self.defer is None else bool(self.defer)
        future = None
        host = event = None
        arrays: dict[str, Any]
        if self.thread and device.type == "cpu":
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmri-frames")
            future, arrays, deferred = self._pool.submit(self._tensors, pos), {}, True
        else:
            host, event, arrays = self._tensors(pos)
        lens, attention = self.readouts.rows(pos)
        job = Launched(pos, texts, arrays, lens, attention, deferred, host, event)
        job.future = future
        job.sae = self.readouts.sae_rows(pos) if getattr(self.readouts, "sae", None) is not None else None
        job.probes = self.readouts.probe_rows(pos) if getattr(self.readouts, "probe", None) is not None else None
        return job

    def _tensors(self, pos: Positions) -> tuple[Any, Any, dict[str, Any]]:
        """The step's tiles and statistics (see :class:`Launched`): ``(host, event, arrays)``."""
        import torch

        with torch.inference_mode():
            x = pos.stacked if pos.stacked is not None else torch.stack([pos.acts[s] for s in self.signals])
            values = self.reducer.transform_stacked(x, self.signals)
            tiles = values.to(getattr(torch, self.frame_dtype), copy=True)  # never a view of the activations
            overflow = count_overflow(values, tiles).sum(1)  # [S, L]: finite values stored as ±inf
            tiles = tiles.float() if self.frame_dtype == "bfloat16" else tiles  # numpy has no bfloat16
            xf = x.float()
            l2 = xf.norm(dim=-1)
            sparsity = hoyer_sparsity(xf.abs().sum(-1), l2, xf.shape[-1])
            logits = pos.pred_logits
            device = logits.device
            ids: Any = pos.ids
            if device.type == "cuda":  # no blocking host-to-device copy for the ids
                ids = torch.tensor(pos.ids, dtype=torch.long).pin_memory().to(device, non_blocking=True)
            chosen, ent, top_i, top_p = token_stats_tensors(logits, ids)
            parts = {
                "tiles": tiles,
                "overflow": overflow,
                "norms": l2,
                "sparsity": sparsity,
                "chosen": chosen,
                "entropy": ent,
                "top_ids": top_i,
                "top_probs": top_p,
            }
            if device.type == "cuda":
                return _queue_host_copy(parts, device)
            # the CPU: views, no copy; another device: one synchronous copy per array
            return None, None, {k: v.cpu().numpy() for k, v in parts.items()}

    def close(self) -> None:
        """End the frame thread, if one was started (after the work it was given)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def finish(self, job: Launched) -> list[Frame]:
        """The step's frames, built on the host (waits for the queued copy, if any)."""
        if job.future is not None:
            _, _, job.arrays = job.future.result()
            job.future = None
        arrays = job.arrays
        if job.host is not None:
            job.event.synchronize()
            buf = job.host.numpy().copy()  # off the pinned block, which goes back to torch's cache
            numpy = {**_NUMPY, "tiles": FRAME_NUMPY[self.frame_dtype]}
            arrays = {k: buf[a:b].view(numpy.get(k, np.float32)).reshape(shape) for k, (a, b, shape) in arrays.items()}
            job.host = job.event = None
        pos, sigs = job.pos, self.signals
        self.overflow.add(arrays["overflow"])
        tiles, norms, sparsity = arrays["tiles"], arrays["norms"], arrays["sparsity"]
        chosen, ent = arrays["chosen"].tolist(), arrays["entropy"].tolist()
        top_ids, top_probs = arrays["top_ids"].tolist(), arrays["top_probs"].tolist()
        piece = self.piece
        out = []
        for j, tid in enumerate(pos.ids):
            first = math.isnan(chosen[j]) and math.isnan(ent[j])  # position 0: nothing predicted it
            tops = () if first else tuple(top_ids[j])
            token = Token(
                index=pos.start + j,
                id=tid,
                text=job.texts[j],
                role=pos.role,
                logprob=chosen[j],
                entropy=ent[j],
                top_ids=tops,
                top_probs=() if first else tuple(top_probs[j]),
                top_texts=tuple(piece(t) for t in tops),
            )
            out.append(
                Frame(
                    token,
                    {s: tiles[i, j] for i, s in enumerate(sigs)},
                    {s: norms[i, j] for i, s in enumerate(sigs)},
                    {s: sparsity[i, j] for i, s in enumerate(sigs)},
                    lens=job.lens[j],
                    attention=job.attention[j],
                    sae=job.sae[j] if job.sae is not None else None,
                    probes=job.probes[j] if job.probes is not None else None,
                )
            )
        return out


def _queue_host_copy(parts: dict[str, Any], device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Every part packed into one CUDA buffer and one non-blocking copy of it into pinned host
    memory, with an event recorded after the copy; the layout is ``{name: (start, stop, shape)}``."""
    import torch

    flat, layout, at = [], {}, 0
    for name in _PACKED:
        t = parts[name].to(device).contiguous()
        b = t.reshape(-1).view(torch.uint8)
        layout[name] = (at, at + b.numel(), tuple(t.shape))
        at += b.numel()
        flat.append(b)
    packed = torch.cat(flat)
    host = torch.empty(packed.numel(), dtype=torch.uint8, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    event = torch.cuda.Event()  # type: ignore[no-untyped-call,unused-ignore]  # untyped in the library
    event.record()
    return host, event, layout
