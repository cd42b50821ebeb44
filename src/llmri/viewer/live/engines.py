"""What generates a live turn (:class:`Engine`): a local model (activations recorded) or an
OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ...frame import SIGNALS
from ...reducers import REDUCERS
from .protocol import ChatSettings

if TYPE_CHECKING:
    from ... import ChatOnlyClient, FrameStream
    from ...store import FrameStore


class Engine(Protocol):
    """Opens a stream of frames for messages and settings: what answers a live turn.

    Implementations: :class:`ModelEngine` (a local model) and :class:`ChatOnlyEngine` (an
    OpenAI-compatible server). The engine holds what lasts across turns (a loaded model, an HTTP
    client); each turn gets a stream of its own.
    """

    @property
    def mode(self) -> str:
        """``"model"`` (frames carry activations) or ``"chat-only"`` (tokens and logprobs only)."""
        ...

    @property
    def signals(self) -> Sequence[str]:
        """The signals a frame may carry, in :data:`~llmri.frame.SIGNALS` order (none in chat-only mode)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a client is told about the engine (JSON: ``mode``, ``model``, ``backend``, ...); no secrets."""
        ...

    def open(
        self, messages: list[dict[str, str]], settings: ChatSettings, store: FrameStore, meta: dict[str, Any]
    ) -> FrameStream:
        """Start one answer to ``messages`` (checked: roles and contents) with ``settings`` (checked,
        :func:`~llmri.viewer.live.check_request`).

        Returns a :class:`~llmri.FrameStream` whose session already exists in ``store``
        (``stream.session_id``), its metadata extended by ``meta``. Frames are appended to that
        session as the stream is iterated, prompt first; nothing is generated before that.

        Who closes what: the caller owns the stream. It iterates it once (the stream closes its
        session ``complete`` or ``interrupted`` however the iteration ends, and frees its own
        threads and connections) or, if it never iterates, calls ``stream.close()`` (or uses it
        in a ``with`` block); ``stream.stop()`` may come from any thread. The stream never closes
        the engine, nor the store. Raises :class:`~llmri.LlmriError` (one line) for a request it
        cannot serve, before any session is created.
        """
        ...

    def close(self) -> None:
        """Release what the engine holds; called once by its owner, after its last stream ended."""
        ...


class ModelEngine:
    """Generates with a local model through :func:`llmri.stream` (activations recorded).

    ``model``: a :class:`~llmri.models.LoadedModel` (or anything :func:`llmri.stream` accepts, such
    as :class:`~llmri.backends.synthetic.SyntheticModel`); ``backend``: the capture backend name
    (``None``: the model's own, or ``hf``); ``lens`` / ``attention``: record those readouts in
    every turn (docs/readouts.md; the hf backend; each frame then reaches the page one forward
    later, with its lens complete); ``lens_dtype``: the lens's unembedding precision (``None``:
    float32, exact; ``"bfloat16"`` is faster, docs/benchmarks.md "Readouts"); ``frame_dtype``: what
    the tiles are stored as (float16, bfloat16 or float32; docs/precision.md); ``interventions``:
    ``llmri.steer(...)`` / ``llmri.ablate(...)`` records applied in every turn (the hf backend;
    docs/interventions.md), each turn's session recording them; ``saes`` / ``sae_k``: sparse
    autoencoders (:func:`llmri.load_sae` objects or paths, read once here) whose top ``sae_k`` features
    every turn records (docs/sae.md); ``probes``: directions (:class:`llmri.Direction` objects or paths,
    read once here) whose cosine and projection every turn records (docs/interventions.md). These options, the
    same every turn, are held as one :class:`~llmri.settings.CaptureSettings`; a turn's own
    (``max_new_tokens``, ``temperature``...) go over them.
    """

    mode = "model"

    def __init__(
        self,
        model: Any,
        backend: str | None = None,
        *,
        lens: bool = False,
        attention: bool = False,
        lens_dtype: str | None = None,
        frame_dtype: str | None = None,
        interventions: Sequence[Any] = (),
        saes: Sequence[Any] = (),
        sae_k: int | None = None,
        probes: Any = (),
        directions: Sequence[Any] = (),
    ) -> None:
        from ..._errors import CaptureError
        from ...capture.probes import read_probes
        from ...capture.resolve import as_model, backend_for
        from ...capture.saes import load_saes
        from ...interventions import load_direction
        from ...settings import DEFAULTS

        self.model = as_model(model)
        self.backend, cls = backend_for(self.model, backend)
        if attention and not getattr(cls, "supports_attention", False):
            raise CaptureError(f"the {self.backend} backend records no attention: --attention needs --backend hf")
        if lens and self.backend == "llama.cpp":
            raise CaptureError("the llama.cpp engine has no logit lens: --lens needs --backend hf")
        self.readouts = [name for name, on in (("lens", lens), ("attention", attention)) if on]
        self.lens_dtype = lens_dtype
        self.saes = load_saes(saes)  # read once; each turn checks them against the model and records them
        self.options = DEFAULTS.replace(
            backend=self.backend,
            lens=lens,
            lens_dtype=lens_dtype,
            attention=attention,
            frame_dtype=frame_dtype or DEFAULTS.frame_dtype,
            interventions=interventions,  # every turn, checked against the model when it opens
            saes=tuple(self.saes),
            sae_k=DEFAULTS.sae_k if sae_k is None else sae_k,
            probes=probes,
        )
        self.probes = [name for name, _ in read_probes(self.options.probes)]  # a bad file: one line, now
        if self.options.interventions and not getattr(cls, "supports_interventions", False):
            raise CaptureError(
                f"the {self.backend} backend applies no interventions: use --backend hf (or transformer-lens, nnsight)"
            )
        self.signals = [s for s in SIGNALS if s in getattr(cls, "provides", ())]
        describe = getattr(self.model, "describe", None)
        info = describe() if callable(describe) else {}
        self.name = str(info.get("name") or type(self.model).__name__)
        self.n_layers = info.get("n_layers")
        self.d_model = d_model = info.get("d_model")
        #: a turn's ``settings.steer`` (:mod:`.steering`): whether the backend applies it, the saved directions by name
        self.steerable = bool(getattr(cls, "supports_interventions", False))
        self.directions = {Path(str(p)).stem: load_direction(p) for p in directions}
        for sae in self.saes:  # what can be checked without a turn: width, layer range, model name
            if isinstance(self.n_layers, int) and isinstance(d_model, int):
                sae.check_model(d_model, self.n_layers)
            sae.check_model_name(self.name)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.name,
            "backend": self.backend,
            "signals": self.signals,
            "reducers": REDUCERS.names(),
            "n_layers": self.n_layers,
            "readouts": self.readouts,
            "saes": [sae.name for sae in self.saes],
            "probes": self.probes,
            "steerable": self.steerable,
            "d_model": self.d_model,
            "directions": list(self.directions),
        }

    def open(
        self, messages: list[dict[str, str]], settings: ChatSettings, store: FrameStore, meta: dict[str, Any]
    ) -> FrameStream:
        from ...capture.stream import CaptureStream
        from .steering import steer_records

        steered = steer_records(settings.get("steer"), self.model, self.directions, self.backend, self.saes)
        return CaptureStream(
            self.model,
            messages,
            self.options,
            store=store,
            meta=meta,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=settings["seed"],
            signals=settings["signals"],
            reducer=settings["reducer"],
            ignore_eos=settings.get("ignore_eos", False),
            interventions=(*self.options.interventions, *steered),
        )

    def close(self) -> None:
        pass


class ChatOnlyEngine:
    """Generates through an OpenAI-compatible server fixed at launch (no activations).

    ``client``: a :class:`~llmri.ChatOnlyClient` (URL, model and key are fixed in it).
    """

    mode = "chat-only"

    def __init__(self, client: ChatOnlyClient) -> None:
        self.client = client
        self.signals: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.client.model or "(the server's model)",
            "url": self.client.url,  # without credentials, query or fragment
            "backend": "openai",
            "signals": [],
            "reducers": [],
            "readouts": [],
        }

    def open(
        self, messages: list[dict[str, str]], settings: ChatSettings, store: FrameStore, meta: dict[str, Any]
    ) -> FrameStream:
        return self.client.stream(
            messages,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=settings["seed"],
            store=store,
            meta=meta,
        )

    def close(self) -> None:
        self.client.close()
