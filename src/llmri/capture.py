"""``llmri.stream`` and ``llmri.capture``: run the decode loop, reduce each forward, emit Frames."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator, Sequence
from typing import Any

from ._errors import CaptureError
from .backends.base import BACKENDS, Capture, check_signals
from .calibration import prepare_reducer
from .codec import TextCodec
from .decode import Detokenizer, Positions, decode_loop
from .frame import Frame
from .framestream import FrameStream
from .messages import check_messages
from .models import LoadedModel, load_model
from .precision import check_frame_dtype
from .reducers.base import Reducer, make_reducer
from .stepframes import Launched, StepFrames
from .stepreadouts import CAPTURE_LENS_BATCH, StepReadouts, check_attention_k, check_lens_batch, check_lens_dtype
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


class CaptureStream(FrameStream):
    """An iterable of :class:`~llmri.frame.Frame`, one per token position, prompt first.

    Everything that can fail before generation fails in the constructor, the cheap checks first
    (settings, backend, signals, reducer and tile, message shapes) and only then the model load,
    the prompt encoding and the reducer's calibration. ``meta`` describes the session; ``stop()``
    ends generation after the current forward (thread-safe); ``close()`` stops it too. With
    ``store``, each frame is appended to a new session of that store as it is produced
    (``session_id``). See :class:`~llmri.framestream.FrameStream` for the lifecycle.

    ``lens_dtype`` (``"bfloat16"``, ``"float16"``; default float32, exact): the lens's unembedding in
    that precision, ~3x faster on a CPU with AVX-512 BF16 but ~1e-2 off in probabilities
    (docs/benchmarks.md, "Readouts"). ``lens_batch``: positions whose lens rows are computed in one
    matmul (default 1 here, 8 in :func:`capture`); a frame waits until its batch is computed, up to
    ``lens_batch`` forwards, so a stream someone watches keeps 1. ``frame_dtype`` (``"float16"``,
    the default; ``"bfloat16"``, ``"float32"``): what the tiles are stored as (docs/precision.md); values
    that overflow it are counted in ``meta["overflow"]`` and reported in one warning at the end.
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
        lens_dtype: str | None = None,
        lens_batch: int | None = None,
        frame_dtype: str | None = None,
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
        check_lens_dtype(lens_dtype)
        lens_batch = check_lens_batch(lens_batch)
        frame_dtype = check_frame_dtype(frame_dtype)
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
        self.meta["frame_dtype"] = frame_dtype
        if self.capture.signal_modules:
            self.meta["signal_modules"] = {s: list(v) for s, v in self.capture.signal_modules.items()}
        self.readouts = StepReadouts(
            self.capture,
            lens=lens,
            attention=attention,
            attention_k=attention_k,
            n_positions=len(self.prompt_ids) + self.settings.max_new_tokens,
            piece=self.codec.piece,
            lens_dtype=lens_dtype,
            lens_batch=lens_batch,
        )
        self.meta.update(self.readouts.meta())
        # LLMRI_FRAME_THREAD=1 / 0 forces it; else the backend says (on: llama.cpp's compiled callback)
        env = os.environ.get("LLMRI_FRAME_THREAD", "").strip()
        thread = env == "1" if env in ("0", "1") else self.capture.frame_thread
        self.frames = StepFrames(
            self.signals, self.reducer, self.codec.piece, self.readouts, thread=thread, frame_dtype=frame_dtype
        )
        self._generated = ""  # the answer's tail, for stop strings
        self._tail = max((len(x) for x in self.settings.stop), default=0) + 32
        self.attach(store, meta)

    @property
    def reducer_state(self) -> dict[str, Any]:
        return self.reducer.state_dict()

    def _release(self) -> None:
        self.frames.close()

    def _final_meta(self) -> dict[str, Any]:
        self.frames.overflow.warn()  # once, at the end: never silent (docs/precision.md)
        return {**super()._final_meta(), "overflow": self.frames.overflow.meta()}

    def _check_stops(self, pos: Positions, texts: list[str]) -> None:
        """The stop conditions, from each generated token's text: known at launch, before the next forward."""
        if pos.role != "generated":
            return
        stops = self.settings.stop
        for tid, text in zip(pos.ids, texts, strict=True):
            self._generated = (self._generated + text)[-self._tail * 2 :]
            if tid in self.codec.eos_ids and not self.settings.ignore_eos:
                self.stop_reason = "eos"
            elif stops and any(x in self._generated for x in stops):
                self.stop_reason = "stop_string"
                self._stop_event.set()

    def _produce(self) -> Generator[Frame, None, None]:
        detok = Detokenizer(self.codec.decode)
        held: list[Frame] = []  # frames waiting for their lens rows (docs/readouts.md)
        pending: Launched | None = None  # a deferred step: its frames are built after the next forward is queued
        steps = decode_loop(
            self.capture,
            self.prompt_ids,
            self.settings,
            eos_ids=self.codec.eos_ids,
            should_stop=self._stop_event.is_set,
            max_positions=self._max_positions,
            attention=self.readouts.attention,
        )
        while True:
            try:
                pos = next(steps)
            except StopIteration:
                break
            except Exception:
                # what was produced before the error, whole: every frame whose next token is known
                if pending is not None:
                    held += self.frames.finish(pending)
                self.readouts.flush(last=False)
                yield from self._ready(held)
                raise
            job = self.frames.launch(pos, detok)  # completes the lens rows that waited for this step
            self._check_stops(pos, job.texts)
            if pending is not None:
                held += self.frames.finish(pending)
                pending = None
            if job.deferred:
                pending = job
            else:
                held += self.frames.finish(job)
            yield from self._ready(held)
        self.readouts.flush(last=True)
        if pending is not None:
            held += self.frames.finish(pending)
        yield from held
        if not self.stop_reason:
            self.stop_reason = "stopped" if self._stop_event.is_set() else "max_new_tokens"

    def _ready(self, held: list[Frame]) -> list[Frame]:
        """Take from ``held`` (in place) the frames whose lens rows are complete, oldest first."""
        done = self.readouts.done
        n = len(held) if done is None else sum(1 for f in held if f.token.index < done)
        out = held[:n]
        del held[:n]
        return out


def stream(model: Any, prompt: Any, **kw: Any) -> CaptureStream:
    """Capture ``prompt`` on ``model`` frame by frame: iterate the result to get each
    :class:`~llmri.frame.Frame` as soon as its forward finishes. Takes the same keywords as
    :func:`capture`."""
    return CaptureStream(model, prompt, **kw)


def capture(model: Any, prompt: Any, *, progress: bool | None = None, **kw: Any) -> Session:
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
    module each signal records per layer ``{i}``; hf and nnsight backends). ``progress``: a bar of
    tokens and tokens/s (tqdm; ``None``: in a notebook only, once the capture has run a second).
    With ``lens=True``, ``lens_batch`` (default 8) positions' lens rows are computed at once.
    ``frame_dtype``: ``float16`` (default), ``bfloat16`` or ``float32`` (docs/precision.md).
    """
    from .progress import tracked

    kw.setdefault("lens_batch", CAPTURE_LENS_BATCH)
    stream = CaptureStream(model, prompt, **kw)
    return Session.collect(tracked(stream, progress, len(stream.prompt_ids) + stream.settings.max_new_tokens))
