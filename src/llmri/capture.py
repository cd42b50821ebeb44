"""``llmri.stream`` and ``llmri.capture``: run the decode loop, reduce each forward, emit Frames."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Sequence
from typing import Any

from ._errors import CaptureError
from .backends.base import BACKENDS, Capture, check_signals
from .calibration import prepare_reducer
from .codec import TextCodec
from .decode import Detokenizer, Positions, decode_loop
from .frame import TOP_K, Frame, Token
from .framestream import FrameStream
from .messages import check_messages
from .models import LoadedModel, load_model
from .reducers.base import Reducer, make_reducer
from .stepreadouts import StepReadouts, check_attention_k
from .store import Session
from .wrapping import is_transformers_model, wrap


def _is_spec(model: Any) -> bool:
    """Whether ``model`` names a model to load (``None`` for the bundled one, a path or an id)."""
    return model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")


def _adapt(model: Any, tokenizer: Any = None) -> Any:
    """A model object the user built, as the object a capture records: a transformers model (or a
    ``(model, tokenizer)`` pair) wrapped by :func:`llmri.wrap`, a TransformerBridge or an nnsight
    model wrapped to record with its own backend; a model object llmri knows as it is."""
    from .backends import nnsight as nnsight_backend
    from .backends import transformer_lens as tl_backend

    if isinstance(model, tuple) and len(model) == 2 and is_transformers_model(model[0]):
        if tokenizer is not None and tokenizer is not model[1]:
            raise CaptureError("two tokenizers given: one in the (model, tokenizer) pair and tokenizer=")
        model, tokenizer = model
    if is_transformers_model(model):
        return wrap(model, tokenizer)
    if tokenizer is not None:
        if isinstance(model, LoadedModel):
            return dataclasses.replace(model, tokenizer=tokenizer)
        raise CaptureError(
            f"tokenizer= goes with a transformers model; this {type(model).__name__} brings its own tokenizer"
        )
    if tl_backend.is_bridge(model):
        return tl_backend.wrap(model)
    if nnsight_backend.is_nnsight(model):
        return nnsight_backend.wrap(model)
    return model


def as_model(model: Any, tokenizer: Any = None) -> Any:
    """The model object a capture records.

    Parameters
    ----------
    model:
        A spec for :func:`llmri.load_model` (``None`` for the bundled model, a directory, a
        ``.gguf`` file or a hub id); a transformers ``PreTrainedModel`` you loaded (or a
        ``(model, tokenizer)`` pair); a TransformerBridge or nnsight model you built; or a model
        object llmri already knows (:class:`~llmri.models.LoadedModel`, a synthetic model).
    tokenizer:
        The tokenizer of a transformers model (default: loaded from its ``name_or_path`` when
        that is a local directory), or one to use instead of a LoadedModel's; a spec, a bridge and
        an nnsight model bring their own.

    Returns
    -------
    object
        The loaded model for a spec (this can take minutes); a transformers model wrapped by
        :func:`llmri.wrap` (not copied, not moved); a TransformerBridge or nnsight model wrapped to
        record with its own backend; anything else as it is.
    """
    if _is_spec(model):
        if tokenizer is not None:
            raise CaptureError("tokenizer= goes with a model object: a model spec brings its own tokenizer")
        return load_model(model)
    return _adapt(model, tokenizer)


def backend_for(model: Any, backend: str | None) -> tuple[str, type[Capture]]:
    """The capture backend that records ``model``.

    Parameters
    ----------
    model:
        What :func:`as_model` returned (or ``None``, for a model still to be loaded).
    backend:
        A name from ``BACKENDS``; ``None`` picks the model's own backend (a wrapped or synthetic
        model), else ``"hf"``.

    Returns
    -------
    (str, type[Capture])
        The backend's name and class; nothing is built.

    Raises
    ------
    CaptureError
        An unknown name, or a model wrapped for another backend than the one named.
    """
    own = getattr(model, "llmri_backend", None)
    if backend is None:
        backend = own or "hf"
    elif own and backend != own and own in ("transformer-lens", "nnsight", "llama.cpp"):
        raise CaptureError(f"this model is wrapped for the {own!r} backend: it cannot record with {backend!r}")
    try:
        return backend, BACKENDS.get(backend)
    except KeyError as exc:
        raise CaptureError(str(exc.args[0])) from None


def hoyer_sparsity(l1: Any, l2: Any, d: int) -> Any:
    """Hoyer's measure per vector from its L1 and L2 norms, in [0, 1]: 0 for equal magnitudes,
    1 for a single non-zero."""
    return ((d**0.5 - l1 / l2.clamp_min(1e-30)) / (d**0.5 - 1)).clamp(0, 1)


def token_stats(
    pred_logits: Any, ids: list[int]
) -> tuple[list[float], list[float], list[list[int]], list[list[float]]]:
    """Per row of ``pred_logits`` ``[n, vocab]``: log p of ``ids[row]``, the entropy (nats), and the
    top-k ids and probabilities; NaN rows (position 0) give NaNs.

    One exp pass: with l = logits - max, e = exp(l), z = sum(e): log p(i) = l[i] - log z,
    entropy = log z - (e . l) / z, top-k probabilities = exp(top-k of l - log z). Masked (-inf)
    logits are clamped to -1e30, as 0 * -inf would be NaN.
    """
    import torch

    logits = pred_logits.float()
    top_l, top_i = logits.topk(TOP_K, dim=-1)  # its first column is the max
    mx = top_l[:, :1]
    shifted = (logits - mx).clamp_min_(-1e30)
    e = shifted.exp()
    z = e.sum(-1)
    lse = z.log()
    dot = torch.bmm(e[:, None, :], shifted[:, :, None])[:, 0, 0]  # e . l without an [n, vocab] temporary
    ent = (lse - dot / z).clamp_min(0)
    chosen = shifted.gather(1, torch.tensor(ids, dtype=torch.long, device=shifted.device)[:, None])[:, 0] - lse
    top_p = (top_l - mx - lse[:, None]).exp()
    return chosen.tolist(), ent.tolist(), top_i.tolist(), top_p.tolist()


class CaptureStream(FrameStream):
    """An iterable of :class:`~llmri.frame.Frame`, one per token position, prompt first.

    Everything that can fail before generation fails in the constructor, the cheap checks first
    (settings, backend, signals, reducer and tile, message shapes) and only then the model load,
    the prompt encoding and the reducer's calibration. ``meta`` describes the session; ``stop()``
    ends generation after the current forward (thread-safe); ``close()`` stops it too. With
    ``store``, each frame is appended to a new session of that store as it is produced
    (``session_id``). See :class:`~llmri.framestream.FrameStream` for the lifecycle.
    """

    what = "capture stream"

    def __init__(
        self,
        model: Any,
        prompt: Any,
        *,
        max_new_tokens: int = 64,
        signals: Sequence[str] | str | None = None,
        reducer: str | Reducer = "random",
        tile: Any = None,
        reducer_seed: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | str | None = None,
        chat: bool | None = None,
        ignore_eos: bool = False,
        backend: str | None = None,
        lens: bool = False,
        attention: bool = False,
        attention_k: int | str = 16,
        store: Any = None,
        calibration: str | None = None,
        meta: dict[str, Any] | None = None,
        tokenizer: Any = None,
        hook_points: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(self.make_settings(max_new_tokens, temperature, top_p, seed, stop, ignore_eos))
        # what needs no model fails before one loads (a load can take minutes)
        spec = _is_spec(model)
        if spec and tokenizer is not None:
            raise CaptureError("tokenizer= goes with a model object: a model spec brings its own tokenizer")
        adapted = None if spec else _adapt(model, tokenizer)
        name, cls = backend_for(adapted, backend)
        check_signals(signals, cls.provides, name)
        if hook_points is not None and not cls.supports_hook_points:
            raise CaptureError(f"backend {name!r} does not take hook_points (the hf and nnsight backends do)")
        if attention and not cls.supports_attention:
            raise CaptureError(f"backend {name!r} cannot record attention weights: attention=True needs the hf backend")
        attention_k = check_attention_k(attention_k)
        self.reducer = make_reducer(reducer, tile=tile, seed=reducer_seed)
        if isinstance(prompt, (list, tuple)):
            check_messages(prompt)
        self.model = load_model(model, backend=name) if spec else adapted  # llama.cpp: the GGUF itself
        self.backend_name, cls = backend_for(self.model, backend)
        extra = {} if hook_points is None else {"hook_points": hook_points}
        self.capture: Capture = cls(self.model, signals, **extra)
        self.signals = self.capture.signals
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            raise CaptureError("the model has no tokenizer")
        gen_cfg = getattr(getattr(self.model, "model", None), "generation_config", None)
        self.codec = TextCodec(tok, gen_cfg)
        self.prompt_ids, self.messages = self.codec.encode(prompt, chat)
        fp = getattr(self.model, "fingerprint", "")
        self.reducer.setup(self.capture.n_layers, self.capture.d_model, fp)
        prepare_reducer(self.reducer, self.capture, self.codec, self.signals, calibration)
        max_pos = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self._max_positions = int(max_pos) if isinstance(max_pos, int) else None
        describe = getattr(self.model, "describe", None)
        self.meta = self.base_meta(
            model=describe() if callable(describe) else {"name": type(self.model).__name__},
            backend=self.backend_name,
            prompt=prompt,
            messages=self.messages,
            chat_only=False,
            reducer=self.reducer.spec,
            signals=self.signals,
            layers=self.capture.layer_names,
            tile=self.reducer.tile,
            scales={s: self.reducer.scales.get(s, []) for s in self.signals},
            eos_ids=self.codec.eos_ids,
            special_ids=self.codec.special_ids,
        )
        if self.capture.signal_modules:
            self.meta["signal_modules"] = {s: list(v) for s, v in self.capture.signal_modules.items()}
        self.readouts = StepReadouts(
            self.capture,
            lens=lens,
            attention=attention,
            attention_k=attention_k,
            n_positions=len(self.prompt_ids) + self.settings.max_new_tokens,
            piece=self.codec.piece,
        )
        self.meta.update(self.readouts.meta())
        self.attach(store, meta)

    @property
    def reducer_state(self) -> dict[str, Any]:
        return self.reducer.state_dict()

    def _frames(self, pos: Positions, detok: Detokenizer) -> list[Frame]:
        import torch

        sigs = self.signals
        acts = [pos.acts[s] for s in sigs]
        reduced = self.reducer.transform_many(dict(zip(sigs, acts, strict=True)))
        # every signal at once: [signals, n, layers, d]
        x = torch.stack(acts).float()
        l2 = x.norm(dim=-1)
        sparsity = hoyer_sparsity(x.abs().sum(-1), l2, x.shape[-1]).cpu().numpy()
        norms = l2.cpu().numpy()
        tiles = torch.stack([reduced[s] for s in sigs]).to(torch.float16).cpu().numpy()
        chosen, ent, top_ids, top_probs = token_stats(pos.pred_logits, pos.ids)
        lens, attention = self.readouts.rows(pos)
        out = []
        for j, tid in enumerate(pos.ids):
            first = math.isnan(chosen[j]) and math.isnan(ent[j])  # position 0: nothing predicted it
            tops = () if first else tuple(top_ids[j])
            token = Token(
                index=pos.start + j,
                id=tid,
                text=detok.push(tid),
                role=pos.role,
                logprob=chosen[j],
                entropy=ent[j],
                top_ids=tops,
                top_probs=() if first else tuple(top_probs[j]),
                top_texts=tuple(self.codec.piece(t) for t in tops),
            )
            out.append(
                Frame(
                    token,
                    {s: tiles[i, j] for i, s in enumerate(sigs)},
                    {s: norms[i, j] for i, s in enumerate(sigs)},
                    {s: sparsity[i, j] for i, s in enumerate(sigs)},
                    lens=lens[j],
                    attention=attention[j],
                )
            )
        return out

    def _produce(self) -> Generator[Frame, None, None]:
        detok = Detokenizer(self.codec.decode)
        generated = ""
        stops = self.settings.stop
        tail = max((len(x) for x in stops), default=0) + 32
        held: Frame | None = None
        for pos in decode_loop(
            self.capture,
            self.prompt_ids,
            self.settings,
            eos_ids=self.codec.eos_ids,
            should_stop=self._stop_event.is_set,
            max_positions=self._max_positions,
            attention=self.readouts.attention,
        ):
            frames = self._frames(pos, detok)  # fills the held frame's lens (its next token is this step's first)
            for frame in frames:  # stop conditions as each frame is built, before any frame waits
                if pos.role == "generated":
                    generated = (generated + frame.token.text)[-tail * 2 :]
                    if frame.token.id in self.codec.eos_ids and not self.settings.ignore_eos:
                        self.stop_reason = "eos"
                    elif stops and any(x in generated for x in stops):
                        self.stop_reason = "stop_string"
                        self._stop_event.set()
            if held is not None:
                yield held
            if self.readouts.holds_last:  # docs/readouts.md: the lens's next token comes a step later
                frames, held = frames[:-1], frames[-1]
            yield from frames
        self.readouts.finish()
        if held is not None:
            yield held
        if not self.stop_reason:
            self.stop_reason = "stopped" if self._stop_event.is_set() else "max_new_tokens"


def stream(model: Any, prompt: Any, **kw: Any) -> CaptureStream:
    """Capture ``prompt`` on ``model`` frame by frame: iterate the result to get each
    :class:`~llmri.frame.Frame` as soon as its forward finishes. Takes the same keywords as
    :func:`capture`."""
    return CaptureStream(model, prompt, **kw)


def capture(model: Any, prompt: Any, **kw: Any) -> Session:
    """Capture ``prompt`` on ``model`` and return the whole :class:`~llmri.session.Session`.

    ``model``: a spec for :func:`llmri.load_model` (``None`` for the bundled model), a
    :class:`~llmri.models.LoadedModel`, a transformers model you loaded (``tokenizer=``, or a
    ``(model, tokenizer)`` pair; see :func:`llmri.wrap`), a TransformerBridge or an nnsight model.
    ``prompt``: raw text, or a list of ``{"role", "content"}`` messages (chat template);
    ``chat=True`` wraps a string as one user message. Keywords: ``max_new_tokens``, ``signals``
    (subset of resid/attn/mlp; default: every one the model has), ``reducer``
    (random/ipca/neurons), ``tile`` (``"16x16"``), ``reducer_seed``, ``temperature``, ``top_p``,
    ``seed``, ``stop``, ``ignore_eos``, ``backend``, ``store`` (path/URL/FrameStore to append to),
    ``calibration``, ``tokenizer``, ``hook_points`` (``{signal: "path.{i}.to.module"}``, the
    module each signal records per layer ``{i}``; hf and nnsight backends).
    """
    return Session.collect(CaptureStream(model, prompt, **kw))
