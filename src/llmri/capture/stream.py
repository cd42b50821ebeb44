"""``llmri.stream`` and ``llmri.capture``: run the decode loop, reduce each forward, emit Frames."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Unpack

from .._errors import CaptureError
from ..backends.base import Backend, check_signals
from ..backends.layers import LayerSubset
from ..frame import Frame
from ..interventions import Plan, run_sources
from ..models import load_model
from ..reducers.base import make_reducer
from ..settings import (
    CAPTURE_LENS_BATCH,
    CaptureOptions,
    CaptureSettings,
    check_attention_k,
    check_layers,
    check_lens_batch,
    document,
    settings_from,
)
from ..store import Session
from .calibration import calibration_means, prepare_reducer
from .codec import TextCodec
from .decode import Detokenizer, Positions, decode_loop
from .frames import Launched, StepFrames
from .framestream import FrameStream
from .messages import check_messages
from .precision import check_frame_dtype
from .readouts import StepReadouts
from .resolve import adapt, backend_for, is_spec
from .saes import SAEStep, load_saes, module_names


class CaptureStream(FrameStream):
    """An iterable of :class:`~llmri.frame.Frame`, one per token position, prompt first.

    Everything that can fail before generation fails in the constructor, the cheap checks first
    (settings, backend, signals, reducer and tile, message shapes) and only then the model load,
    the prompt encoding and the reducer's calibration. ``meta`` describes the session; ``stop()``
    ends generation after the current forward (thread-safe); ``close()`` stops it too. With
    ``store``, each frame is appended to a new session of that store as it is produced
    (``session_id``). See :class:`~llmri.FrameStream` for the lifecycle.

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
        settings: CaptureSettings | None = None,
        *,
        store: Any = None,
        meta: dict[str, Any] | None = None,
        tokenizer: Any = None,
        **options: Unpack[CaptureOptions],
    ) -> None:
        #: every option of this capture (the settings table, :mod:`llmri.settings`)
        self.options = o = settings_from(settings, options)
        super().__init__(o.generation())
        # what needs no model fails before one loads (a load can take minutes)
        spec = is_spec(model)
        if spec and tokenizer is not None:
            raise CaptureError("tokenizer= goes with a model object: a model spec brings its own tokenizer")
        adapted = None if spec else adapt(model, tokenizer)
        name, cls = backend_for(adapted, o.backend)
        check_signals(o.signals, cls.provides, name)
        if o.hook_points is not None and not cls.supports_hook_points:
            raise CaptureError(f"backend {name!r} does not take hook_points (the hf and nnsight backends do)")
        if o.attention and not cls.supports_attention:
            raise CaptureError(f"backend {name!r} cannot record attention weights: attention=True needs the hf backend")
        if o.interventions and not cls.supports_interventions:
            raise CaptureError(
                f"backend {name!r} cannot apply interventions: use backend='hf' (or 'transformer-lens', 'nnsight')"
            )
        attention_k = check_attention_k(o.attention_k)
        lens_batch = check_lens_batch(o.lens_batch)
        frame_dtype = check_frame_dtype(o.frame_dtype)
        self.reducer = make_reducer(o.reducer, tile=o.tile, seed=o.reducer_seed)
        if isinstance(prompt, (list, tuple)):
            check_messages(prompt)
        saes = load_saes(o.saes)  # their files before the model's
        self.model = load_model(model, backend=name) if spec else adapted  # llama.cpp: the GGUF itself
        self.backend_name, cls = backend_for(self.model, o.backend)
        extra = {} if o.hook_points is None else {"hook_points": o.hook_points}
        self.backend: Backend = cls(self.model, o.signals, **extra)
        whole = self.backend  # interventions name the model's own layers
        layers = check_layers(o.layers)
        if layers is not None:  # record these layers only
            self.backend = LayerSubset(whole, layers)
        self.signals = self.backend.signals
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            raise CaptureError("the model has no tokenizer")
        gen_cfg = getattr(getattr(self.model, "model", None), "generation_config", None)
        self.codec = TextCodec(tok, gen_cfg)
        self.prompt_ids, self.messages = self.codec.encode(prompt, o.chat)
        fp = getattr(self.model, "fingerprint", "")
        if isinstance(self.backend, LayerSubset):  # its own calibration cache: scales per recorded layer
            fp = f"{fp}-layers-{'.'.join(map(str, self.backend.indices))}"
        self.reducer.setup(self.backend.n_layers, self.backend.d_model, fp)
        prepare_reducer(self.reducer, self.backend, self.codec, self.signals, o.calibration)
        records = list(o.interventions)
        if o.interventions:  # after calibration, which runs the model as it is
            plan = Plan(o.interventions, n_layers=whole.n_layers, d_model=self.backend.d_model,
                        n_prompt=len(self.prompt_ids), fingerprint=fp or None)  # fmt: skip
            if plan.mean_signals:
                plan.means = calibration_means(whole, self.codec, plan.mean_signals, o.calibration)
                records = plan.recorded()
            run_sources(plan, whole, lambda text: self.codec.encode(text, o.chat)[0])  # patch sources
            self.backend.intervene(plan)
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
            layers=self.backend.layer_names,
            tile=self.reducer.tile,
            scales={s: self.reducer.scales.get(s, []) for s in self.signals},
            eos_ids=self.codec.eos_ids,
            special_ids=self.codec.special_ids,
        )
        self.meta["frame_dtype"] = frame_dtype
        if isinstance(self.backend, LayerSubset):  # which of the model's layers the frames hold
            self.meta["layer_indices"] = list(self.backend.indices)
        if o.interventions:  # exactly, the vectors included: the run can be rebuilt from its record
            self.meta["interventions"] = [x.to_dict() for x in records]
        if self.backend.signal_modules:
            self.meta["signal_modules"] = {s: list(v) for s, v in self.backend.signal_modules.items()}
        self.readouts = StepReadouts(
            self.backend,
            lens=o.lens,
            attention=o.attention,
            attention_k=attention_k,
            n_positions=len(self.prompt_ids) + self.settings.max_new_tokens,
            piece=self.codec.piece,
            lens_dtype=o.lens_dtype,
            lens_batch=lens_batch,
        )
        self.meta.update(self.readouts.meta())
        if saes:
            self.readouts.sae = SAEStep(
                saes, o.sae_k, d_model=self.backend.d_model, n_layers=self.backend.n_layers,
                signals=self.signals, model_name=self.meta["model"].get("name"),
                signal_modules=self.backend.signal_modules, modules=module_names(self.backend),
            )  # fmt: skip
            self.meta.update(self.readouts.sae.meta())
        # LLMRI_FRAME_THREAD=1 / 0 forces it; else the backend says (on: llama.cpp's compiled callback)
        env = os.environ.get("LLMRI_FRAME_THREAD", "").strip()
        thread = env == "1" if env in ("0", "1") else self.backend.frame_thread
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
            self.backend,
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


def stream(
    model: Any,
    prompt: Any,
    settings: CaptureSettings | None = None,
    *,
    store: Any = None,
    meta: dict[str, Any] | None = None,
    tokenizer: Any = None,
    **options: Unpack[CaptureOptions],
) -> CaptureStream:
    """Capture ``prompt`` on ``model`` frame by frame: iterate the result to get each
    :class:`~llmri.frame.Frame` as soon as its forward finishes. Takes what :func:`capture` takes
    but ``progress``; ``lens_batch`` defaults to 1 here, so each frame waits one forward at most."""
    return CaptureStream(model, prompt, settings, store=store, meta=meta, tokenizer=tokenizer, **options)


def capture(
    model: Any,
    prompt: Any,
    settings: CaptureSettings | None = None,
    *,
    store: Any = None,
    meta: dict[str, Any] | None = None,
    tokenizer: Any = None,
    progress: bool | None = None,
    **options: Unpack[CaptureOptions],
) -> Session:
    """Capture ``prompt`` on ``model`` and return the whole :class:`~llmri.store.Session`.

    ``model``: a spec for :func:`llmri.load_model` (``None`` for the bundled model), a
    :class:`~llmri.models.LoadedModel`, a transformers model you loaded (``tokenizer=``, or a
    ``(model, tokenizer)`` pair; see :func:`llmri.wrap`), a TransformerBridge or an nnsight model.
    ``prompt``: raw text, or a list of ``{"role", "content"}`` messages (chat template).
    ``settings``: a :class:`~llmri.settings.CaptureSettings`; keyword options override it (the
    table below). ``store``: a path, URL or :class:`~llmri.FrameStore` each frame is appended to
    as it is made; ``meta``: extra session metadata; ``tokenizer``: a transformers model's.
    ``progress``: a bar of tokens and tokens/s (tqdm; ``None``: in a notebook only, once the
    capture has run a second). ``lens_batch`` defaults to 8 here.
    """
    from .progressbar import tracked

    o = settings_from(settings, options)
    if o.lens_batch is None:
        o = o.replace(lens_batch=CAPTURE_LENS_BATCH)
    stream = CaptureStream(model, prompt, o, store=store, meta=meta, tokenizer=tokenizer)
    return Session.collect(tracked(stream, progress, len(stream.prompt_ids) + stream.settings.max_new_tokens))


document(stream)
document(capture)
