"""``llama.cpp``: every layer's activations from llama.cpp's eval callback, on a GGUF model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._errors import CaptureError
from ...frame import SIGNALS
from ..base import BACKENDS, Backend, Step
from . import cvec
from .ggml import ggml
from .model import available_cores
from .recorder import Recorder

#: llama.cpp's graph tensor per signal (``cb(cur, "l_out", il)`` in its model builders, named
#: ``l_out-N``), and what each is: the block's output; the attention sub-layer's output after its
#: output projection, before the residual add; the feed-forward output before the residual add.
#: The same points as the ``hf`` backend's hooks (block output, ``self_attn`` and ``mlp`` outputs).
TENSORS = {"resid": "l_out", "attn": "attn_out", "mlp": "ffn_out"}
#: Architectures (``general.architecture``) that name a signal's tensor differently; every mapping
#: is checked on the model's first capture (a probe decode), and a name the graph lacks is refused.
TENSORS_BY_ARCH: dict[str, dict[str, str]] = {}
#: Many builders (qwen2, qwen3, starcoder2, gemma, ... in this llama.cpp) name no ``attn_out-N``.
#: There the attention sub-layer's output is recovered from the residual add that takes it in: the
#: residual stream after attention (the first of :data:`ATTN_FROM` the graph computes for every
#: layer: ``ffn_inp-N``, or gemma's ``sa_out-N``) minus the block's input, ``l_out-(N-1)``, and for
#: block 0 the first of :data:`LAYER0_INPUTS` it computes (the scaled embeddings where a builder
#: scales them, else the token embeddings: ``embd`` in this llama.cpp, ``inp_embd`` in others).
#: Not where the attention output is normalised before the add (:data:`POST_NORM`: OLMo 2, Gemma 2
#: and 3): the difference would be the normalised output, not what the ``hf`` backend records
#: there, so ``attn`` is refused. The probe decides, per model.
ATTN_FROM = ("ffn_inp", "sa_out")
LAYER0_INPUTS = ("inp_scaled", "inp_embd", "embd")
POST_NORM = "attn_post_norm"


def tensor_names(architecture: str) -> dict[str, str]:
    return {**TENSORS, **TENSORS_BY_ARCH.get(architecture, {})}


@dataclass(frozen=True)
class LlamaCache:
    """The ``cache`` a step returns: which sequence of the shared context (``epoch``) and how many
    positions it holds (``n_past``); the KV cache itself stays in llama.cpp."""

    epoch: int
    n_past: int

    def get_seq_length(self) -> int:
        return self.n_past


@BACKENDS.register("llama.cpp")
class LlamaCppBackend(Backend):
    """llama.cpp's eval callback on a :class:`~llmri.backends.llamacpp.GGUFModel`.

    ``step`` decodes the new positions on the model's shared context (its KV cache is the cache:
    ``cache=None`` starts a new sequence, a :class:`LlamaCache` continues one) with every position
    an output, and returns float32 logits ``[n, vocab]`` and float32 ``acts`` ``[n, layers,
    d_model]`` per signal, both new numpy buffers seen as Tensors without a copy (``torch.from_numpy``).
    The callback's recorder is installed for that decode only; an exception inside it is kept,
    llama.cpp is told to stop, the step's positions are dropped from the KV cache and the
    exception is raised after the decode returns. One capture at a time per model: a cache from
    before another capture used the context is refused.
    """

    name = "llama.cpp"
    provides = SIGNALS
    loads_own_files = True
    #: ``steer`` on ``resid`` through llama.cpp's control vectors (:mod:`.cvec`); the rest is refused
    supports_interventions = True

    @classmethod
    def load_model(cls, spec: Any) -> Any:
        from .model import load_gguf

        return load_gguf(spec)

    def __init__(self, model: Any, signals: Sequence[str] | str | None = None) -> None:
        super().__init__(model, signals)
        from .model import GGUFModel

        if not isinstance(model, GGUFModel):
            raise CaptureError(
                f"the llama.cpp backend runs a GGUF file, not a {type(model).__name__}: pass a .gguf path "
                "(or no model, for the bundled one) or llmri.load_model(path, backend='llama.cpp')"
            )
        self.model = model
        self._lib = ggml()
        self.ctx = model.context()
        names = tensor_names(model.architecture)
        self._names = [f"blk.{i}" for i in range(model.n_layers)]
        self._plan_iv: Any = None
        self._verify(names)
        self._plan(names)

    @property
    def frame_thread(self) -> bool:
        """On with the compiled eval callback where llama.cpp's threads leave a core free:
        ``llama_decode`` then runs without the GIL throughout, and the frame thread's work overlaps it
        on that core (0.86x -> 0.92x plain llama.cpp with 1 of 2 cores, docs/benchmarks.md). Where
        llama.cpp's threads take every core, the frame thread takes time from them (0.64x -> 0.29x
        with 2 of 2), and with the Python callback, which needs the GIL at every graph node, it made
        the capture slower."""
        return self.ctx.native and self.model.n_threads < available_cores()

    def _plan(self, names: dict[str, str]) -> None:
        """The recorder's slots: one buffer per signal, and where ``attn`` is derived (see
        :data:`ATTN_FROM`) the buffers it is derived from (``resid``'s when recorded)."""
        n_layers = self.model.n_layers
        self._derived = "attn" in self.signals and "attn" in self.model.derived
        after, first_input = self.model.attn_from
        tensor = {s: after if s == "attn" and self._derived else names[s] for s in self.signals}
        self._slots = {f"{tensor[s]}-{i}".encode(): (k, i) for k, s in enumerate(self.signals) for i in range(n_layers)}
        self._layers = [n_layers] * len(self.signals)
        if self._derived:
            self._resid = self.signals.index("resid") if "resid" in self.signals else len(self._layers)
            if "resid" not in self.signals:
                self._layers.append(n_layers)
                self._slots.update({f"{names['resid']}-{i}".encode(): (self._resid, i) for i in range(n_layers - 1)})
            self._input = len(self._layers)
            self._layers.append(1)
            self._slots[first_input.encode()] = (self._input, 0)

    def _verify(self, names: dict[str, str]) -> None:
        """Probe once per model: decode one token with every signal asked for, and refuse the
        signals whose tensors the graph does not compute for every layer."""
        model = self.model
        if not set(self.signals) <= model.verified:
            wanted = [names[s] for s in SIGNALS] + [*ATTN_FROM, POST_NORM]
            slots = {f"{t}-{i}".encode(): (k, i) for k, t in enumerate(wanted) for i in range(model.n_layers)}
            slots.update({t.encode(): (len(wanted) + j, 0) for j, t in enumerate(LAYER0_INPUTS)})
            layers = [model.n_layers] * len(wanted) + [1] * len(LAYER0_INPUTS)
            rec = Recorder(self._lib, slots, len(layers), 1, layers, model.d_model)
            probe = model.tokenizer.bos_token_id or 0
            with self.ctx.lock:
                self.ctx.reset()
                self.ctx.set_cvec(None, model.n_layers, model.d_model)
                try:
                    with self.ctx.recording(rec):
                        rec.start(0, 1)
                        self.ctx.decode([probe])
                finally:
                    self.ctx.reset()
            if rec.error is not None:
                raise rec.error
            missing = set(rec.missing())

            def complete(tensor: str) -> bool:
                return not any(f"{tensor}-{i}" in missing for i in range(model.n_layers))

            model.verified = {s for s in SIGNALS if complete(names[s])}
            model.derived = set()
            model.post_norm = complete(POST_NORM)
            after = next((t for t in ATTN_FROM if complete(t)), "")
            first_input = next((t for t in LAYER0_INPUTS if t not in missing), "")
            if (
                "attn" not in model.verified
                and names["attn"] == TENSORS["attn"]  # an explicit mapping is taken as given
                and not model.post_norm
                and after
                and first_input
                and complete(names["resid"])
            ):
                model.verified.add("attn")
                model.derived = {"attn"}
                model.attn_from = (after, first_input)
        for s in self.signals:
            if s == "attn" and s not in model.verified and model.post_norm:
                raise CaptureError(
                    f"llama.cpp: no mapping for signal 'attn' in architecture {model.architecture!r}: its graph "
                    f"normalises the attention output before the residual add ({POST_NORM}-N) and names no "
                    f"{names[s]}-N, so the output the other backends record is not there; capture "
                    "signals=['resid', 'mlp'] (or use the hf backend)"
                )
            if s not in model.verified:
                raise CaptureError(
                    f"llama.cpp: no mapping for signal {s!r} in architecture {model.architecture!r}: its graph has "
                    f"no tensor {names[s]}-N for every layer"
                )

    @property
    def layer_names(self) -> list[str]:
        return self._names

    def intervene(self, plan: Any) -> None:
        """Steer ``resid`` through llama.cpp's control vector in every later step; anything else
        is refused in one line naming the ``hf`` backend (:func:`.cvec.check`)."""
        if plan is not None:
            cvec.check(plan)
        self._plan_iv = plan

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        """The llama.cpp graph tensor each signal copies, per layer (``l_out-0``, ...)."""
        names = tensor_names(self.model.architecture)
        out: dict[str, list[str | None]] = {
            s: [f"{names[s]}-{i}" for i in range(self.model.n_layers)] for s in self.signals
        }
        if self._derived:
            after, first_input = self.model.attn_from
            prev = [first_input] + [f"{names['resid']}-{i}" for i in range(self.model.n_layers - 1)]
            out["attn"] = [f"{after}-{i} - {p}" for i, p in enumerate(prev)]
        return out

    @property
    def d_model(self) -> int:
        return self.model.d_model

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step:
        import torch

        ids = [int(x) for x in (input_ids.reshape(-1).tolist() if hasattr(input_ids, "reshape") else input_ids)]
        ctx, n = self.ctx, len(ids)
        out = np.empty((n, ctx.n_vocab), dtype=np.float32) if logits else None
        with ctx.lock:
            if cache is None:
                ctx.reset()
            elif not isinstance(cache, LlamaCache) or (cache.epoch, cache.n_past) != (ctx.epoch, ctx.n_past):
                raise CaptureError(
                    "llama.cpp: this cache is stale: the model's context was used by another capture since "
                    "(one capture at a time per model)"
                )
            start = ctx.n_past
            steer = None if self._plan_iv is None else cvec.buffer(self._plan_iv, start, n, self.n_layers, self.d_model)
            ctx.set_cvec(steer, self.n_layers, self.d_model)
            rec = (Recorder if steer is None else cvec.SteeredRecorder)(
                self._lib,
                self._slots,
                len(self._layers),
                n,
                self._layers,
                self.model.d_model,
                stacked=len(self.signals),
            )
            try:
                with ctx.recording(rec):
                    for r0 in range(0, n, ctx.n_batch):
                        chunk = ids[r0 : r0 + ctx.n_batch]
                        rec.start(r0, len(chunk))
                        ctx.decode(chunk, None if out is None else out[r0 : r0 + len(chunk)])
                        if rec.error is not None:
                            raise rec.error
                        if rec.seen != rec.slots.keys():
                            raise CaptureError(f"llama.cpp: the graph did not compute {', '.join(rec.missing()[:5])}")
            except BaseException:
                ctx.rollback(start)
                raise
            new_cache = LlamaCache(ctx.epoch, ctx.n_past)
        if self._derived:  # attn = (residual after attention) - (the block's input), in place
            attn = rec.bufs[self.signals.index("attn")]
            attn[:, 0] -= rec.bufs[self._input][:, 0]
            attn[:, 1:] -= rec.bufs[self._resid][:, :-1]
        acts = dict(zip(self.signals, rec.tensors()[: len(self.signals)], strict=True))
        stacked = None if rec.block is None else torch.from_numpy(rec.block)  # every signal, one buffer
        lg = None if out is None else torch.from_numpy(out)
        return Step(logits=lg, acts=acts, cache=new_cache, stacked=stacked)
