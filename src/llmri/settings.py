"""The one table of capture options: each option's name, type, default, one line of help and its
check, once. :func:`llmri.capture`, :func:`llmri.stream`, ``llmri capture``'s flags, ``llmri view``'s
live chat and the notebook read it (``help(llmri.capture)`` lists it; ``llmri capture --help`` shows
the same defaults).

A :class:`CaptureSettings` is a value: frozen, checked when built (one clear line for a bad
value), JSON-safe through :meth:`CaptureSettings.to_dict`. Checks that need the model or the backend
(which signals it has, whether it records attention) happen when a capture opens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._errors import CaptureError
from .frame import FRAME_DTYPE, FRAME_DTYPES
from .interventions import as_records
from .readouts.attention import ATTN_TOP_K
from .readouts.probes import ProbeItem, check_probes
from .readouts.sae.readout import SAE_TOP_K

if TYPE_CHECKING:
    from .interventions import Intervention
    from .readouts.sae import SAE
    from .reducers.base import Reducer

#: What ``lens_dtype`` takes: the model's float32 path, or a copy of the unembedding in lower precision.
LENS_DTYPES = ("float32", "bfloat16", "float16")
#: Positions whose lens rows :func:`llmri.capture` computes at once where ``lens_batch`` is not given;
#: a stream's is 1, so that each frame waits one step, not eight.
CAPTURE_LENS_BATCH = 8


@dataclass
class GenerationSettings:
    """How to generate. ``temperature == 0`` is greedy; ``top_p`` < 1 is nucleus sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0):
            raise CaptureError(f"max_new_tokens must be a whole number >= 0, got {self.max_new_tokens!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise CaptureError(f"temperature must be >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise CaptureError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def checked(
        cls,
        max_new_tokens: Any,
        temperature: Any,
        top_p: Any,
        seed: Any,
        stop: Sequence[str] | str | None,
        ignore_eos: bool = False,
    ) -> GenerationSettings:
        """Settings from user values (``seed=None`` is 0); any bad value raises
        :class:`~llmri.CaptureError` with one line."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(x, str) for x in stops):
            raise CaptureError(f"stop must be a string or a list of strings, got {stop!r:.80}")
        try:
            return cls(
                max_new_tokens=max_new_tokens,
                temperature=float(temperature),
                top_p=float(top_p),
                seed=int(seed) if seed is not None else 0,
                stop=stops,
                ignore_eos=bool(ignore_eos),
            )
        except (TypeError, ValueError) as exc:
            raise CaptureError(f"bad generation setting: {exc}") from None


def check_lens_batch(lens_batch: Any) -> int:
    """``lens_batch`` checked: a whole number >= 1 (``None`` is 1)."""
    if lens_batch is None:
        return 1
    if isinstance(lens_batch, bool) or not _whole(lens_batch) or lens_batch < 1:
        raise CaptureError(f"lens_batch must be a whole number >= 1, got {lens_batch!r}")
    return int(lens_batch)


def check_attention_k(attention_k: Any) -> int | str:
    """``attention_k`` checked: a whole number >= 1, or ``"full"`` (every position so far)."""
    if attention_k == "full":
        return "full"
    if isinstance(attention_k, bool) or not _whole(attention_k) or attention_k < 1:
        raise CaptureError(f"attention_k must be a whole number >= 1 or 'full', got {attention_k!r}")
    return int(attention_k)


def check_saes(saes: Any) -> tuple[Any, ...]:
    """``saes`` as a tuple of :class:`~llmri.readouts.sae.SAE` objects and paths (loaded when a capture
    opens); anything else is one line."""
    import os

    if saes is None:
        return ()
    if isinstance(saes, (str, os.PathLike)) or hasattr(saes, "encode"):
        saes = (saes,)
    if not isinstance(saes, (list, tuple)):
        raise CaptureError(f"saes must be a list of SAEs (llmri.load_sae) or paths, got {type(saes).__name__}")
    out = []
    for x in saes:
        if isinstance(x, os.PathLike):
            x = os.fspath(x)
        if not isinstance(x, str) and not (hasattr(x, "encode") and hasattr(x, "d_sae")):
            raise CaptureError(f"saes: {type(x).__name__} is not an SAE (llmri.load_sae) or a path")
        out.append(x)
    return tuple(out)


def check_sae_k(sae_k: Any) -> int:
    """``sae_k`` checked: a whole number >= 1."""
    if isinstance(sae_k, bool) or not _whole(sae_k) or sae_k < 1:
        raise CaptureError(f"sae_k must be a whole number >= 1, got {sae_k!r}")
    return int(sae_k)


def check_lens_dtype(lens_dtype: Any) -> str:
    """``lens_dtype`` checked (``None`` is ``"float32"``: the exact lens)."""
    if lens_dtype is None:
        return "float32"
    if lens_dtype not in LENS_DTYPES:
        raise CaptureError(f"lens_dtype must be one of {', '.join(LENS_DTYPES)}, got {lens_dtype!r}")
    return str(lens_dtype)


def check_frame_dtype(frame_dtype: Any) -> str:
    """``frame_dtype`` checked (``None`` is :data:`~llmri.frame.FRAME_DTYPE`, float16)."""
    if frame_dtype is None:
        return FRAME_DTYPE
    if frame_dtype not in FRAME_DTYPES:
        raise CaptureError(f"frame_dtype must be one of {', '.join(FRAME_DTYPES)}, got {frame_dtype!r}")
    return str(frame_dtype)


def check_layers(layers: Any) -> tuple[int, ...] | None:
    """``layers`` checked: ``None`` (every layer), or the indices of a list, a range or a string
    such as ``"0-5,10"`` (``-1``: the last layer), as a tuple in the order given, each once."""
    if layers is None:
        return None
    items: list[Any]
    if isinstance(layers, str):
        items = []
        for part in (x.strip() for x in layers.split(",")):
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            try:
                items += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
            except ValueError:
                raise CaptureError(f"layers: {part!r:.40} is not an index or a range like 0-5") from None
    elif isinstance(layers, (list, tuple, range)):
        items = list(layers)
    else:
        raise CaptureError(f"layers must be a list, a range or a string like '0-5,10', got {type(layers).__name__}")
    if not items or not all(_whole(x) and not isinstance(x, bool) for x in items):
        raise CaptureError(f"layers must be whole numbers, at least one, got {layers!r:.80}")
    return tuple(dict.fromkeys(int(x) for x in items))


def _whole(x: Any) -> bool:
    import numpy as np

    return isinstance(x, (int, np.integer))


def option(default: Any, help: str, *, metavar: str | None = None, choices: Sequence[str] | None = None) -> Any:
    """One row of the table: the default, one line of help, and how a command line shows it."""
    meta = {"help": help, "metavar": metavar, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a default must be immutable")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CaptureSettings:
    """Every option of a capture, with its default (the table: :func:`options`)."""

    # -- generation
    max_new_tokens: int = option(64, "new tokens to generate at most", metavar="N")
    temperature: float = option(0.0, "sampling temperature; 0 is greedy")
    top_p: float = option(1.0, "nucleus sampling: keep the most likely tokens whose probabilities reach top_p")
    seed: int = option(0, "the sampler's seed (the same seed and settings give the same tokens)")
    stop: tuple[str, ...] = option((), "stop once one of these strings is generated", metavar="TEXT")
    ignore_eos: bool = option(False, "generate past the end-of-sequence token")
    chat: bool | None = option(None, "wrap a string prompt as one user message (messages always use the chat template)")
    # -- what is recorded
    backend: str | None = option(None, "capture backend (`llmri backends`; default: the model's own, else hf)")
    signals: str | tuple[str, ...] | None = option(
        None, "which of resid, attn, mlp (comma-separated; default: every one the model has)"
    )
    hook_points: Mapping[str, str] | None = option(
        None, "the module each signal records per layer {i}: {signal: 'path.{i}.to.module'} (hf, nnsight)"
    )
    reducer: str | Reducer = option("random", "vectors to tiles: random, ipca or neurons (or a Reducer)")
    tile: str | tuple[int, int] | None = option(
        None, "tile shape HxW (default 16x16; neurons: d_model folded near-square)", metavar="HxW"
    )
    reducer_seed: int = option(0, "the random projection's seed")
    calibration: str | None = option(
        None, "text the ipca reducer and the colour scales are fitted on (default: the text llmri ships)"
    )
    frame_dtype: str = option(
        FRAME_DTYPE,
        "what tiles are stored as: float16 (overflows past ±65504), bfloat16 (float32's range, 2 bytes,"
        " coarser) or float32 (exact, twice the bytes); docs/precision.md",
        choices=FRAME_DTYPES,
    )
    layers: str | tuple[int, ...] | None = option(
        None, "record these layers only: a list or range of indices, '0-5,10' (negative from the end; default all)",
        metavar="LIST",
    )  # fmt: skip
    # -- readouts
    lens: bool = option(False, "record the logit lens (every layer's next-token top-5)")
    lens_dtype: str | None = option(
        None,
        "the lens's unembedding precision (default float32, exact; bfloat16 is faster, ~1e-2 off)",
        choices=LENS_DTYPES,
    )
    lens_batch: int | None = option(
        None,
        f"positions whose lens is computed at once ({CAPTURE_LENS_BATCH} in capture(), 1 in a stream;"
        " a frame waits up to that many forwards)",
        metavar="N",
    )
    attention: bool = option(False, "record attention per head")
    attention_k: int | Literal["full"] = option(
        ATTN_TOP_K, "attended positions kept per head, most attended first, or 'full' rows", metavar="K|full"
    )
    # -- SAE features
    saes: tuple[SAE | str, ...] = option(
        (), "sparse autoencoders whose features each token records (llmri.load_sae(...) objects or paths)"
    )
    sae_k: int = option(SAE_TOP_K, "features kept per token and SAE, strongest first", metavar="K")
    # -- direction probes
    probes: tuple[ProbeItem, ...] = option(
        (), "directions each token's cosine and projection are recorded on, at their layers (llmri.Direction or paths)"
    )
    # -- interventions
    interventions: tuple[Intervention, ...] = option(
        (), "change the run: llmri.steer(...) / llmri.ablate(...) records, applied each step (hf backend)"
    )

    def __post_init__(self) -> None:
        # the cheap checks, before any model loads; a sequence becomes a tuple, so the value stays frozen
        stop = self.stop
        if stop is None or isinstance(stop, str):
            stop = () if not stop else (stop,)
        object.__setattr__(self, "stop", tuple(stop) if isinstance(stop, (list, tuple)) else stop)
        if isinstance(self.signals, list):
            object.__setattr__(self, "signals", tuple(self.signals))
        object.__setattr__(self, "interventions", as_records(self.interventions))
        object.__setattr__(self, "saes", check_saes(self.saes))
        object.__setattr__(self, "probes", check_probes(self.probes))
        check_sae_k(self.sae_k)
        self.generation()
        check_attention_k(self.attention_k)
        check_lens_dtype(self.lens_dtype)
        check_frame_dtype(self.frame_dtype)
        object.__setattr__(self, "layers", check_layers(self.layers))
        if self.lens_batch is not None:
            check_lens_batch(self.lens_batch)

    def generation(self) -> GenerationSettings:
        """The generation part, checked (one line for a bad value)."""
        return GenerationSettings.checked(
            self.max_new_tokens, self.temperature, self.top_p, self.seed, self.stop, self.ignore_eos
        )

    def replace(self, **changes: Any) -> CaptureSettings:
        """These settings with ``changes`` (names from the table; an unknown name is one clear line)."""
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            # what Python raises for an unknown keyword, with the table to look in
            raise TypeError(f"unknown capture option {unknown[0]!r} (see help(llmri.capture))")
        return dataclasses.replace(self, **changes) if changes else self

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields() if getattr(self, f.name) != f.default}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a Reducer object is named by its spec's kind, tuples become lists."""
        out: dict[str, Any] = {}
        for f in fields():
            v = getattr(self, f.name)
            if f.name == "reducer" and not isinstance(v, str):
                v = getattr(v, "spec", {}).get("kind", type(v).__name__)
            elif f.name == "interventions":
                v = [x.to_dict() for x in v]
            elif f.name == "saes":
                v = [x if isinstance(x, str) else getattr(x, "path", "") or getattr(x, "name", "") for x in v]
            elif f.name == "probes":  # a path, or a direction's name and the hash of its vectors
                v = [x if isinstance(x, str) else {"name": x.name, "sha256": x.vectors.sha256()} for x in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out


def fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(CaptureSettings)


#: The option names, in the table's order.
NAMES: tuple[str, ...] = tuple(f.name for f in fields())
#: The defaults, as one value.
DEFAULTS = CaptureSettings()
#: The defaults of a conversation (``llmri view``'s live chat and chat-only mode): longer answers.
CHAT_DEFAULTS = DEFAULTS.replace(max_new_tokens=128)


def options() -> list[tuple[str, str, Any, str]]:
    """The table: ``(name, type, default, help)`` per option."""
    return [(f.name, str(f.type), f.default, f.metadata["help"]) for f in fields()]


class CaptureOptions(TypedDict, total=False):
    """The table's options as keywords (``**options: Unpack[CaptureOptions]``), so an IDE and a
    type checker see each one; ``tests`` check it names exactly the table's fields and types."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] | Sequence[str] | str | None
    ignore_eos: bool
    chat: bool | None
    backend: str | None
    signals: str | tuple[str, ...] | Sequence[str] | None
    hook_points: Mapping[str, str] | None
    reducer: str | Reducer
    tile: str | tuple[int, int] | None
    reducer_seed: int
    calibration: str | None
    frame_dtype: str
    layers: str | tuple[int, ...] | Sequence[int] | range | None
    lens: bool
    lens_dtype: str | None
    lens_batch: int | None
    attention: bool
    attention_k: int | Literal["full"]
    saes: tuple[SAE | str, ...] | Sequence[SAE | str] | None
    sae_k: int
    probes: tuple[ProbeItem, ...] | Sequence[ProbeItem] | Mapping[str, Any] | ProbeItem | None
    interventions: tuple[Intervention, ...] | Sequence[Intervention] | None


def settings_from(settings: CaptureSettings | None, options: Mapping[str, Any]) -> CaptureSettings:
    """``settings`` (default: the table's defaults) with keyword ``options`` over them."""
    if settings is not None and not isinstance(settings, CaptureSettings):
        raise CaptureError(f"settings must be a CaptureSettings, got {type(settings).__name__}")
    return (settings or DEFAULTS).replace(**options)


def document(fn: Any, *, extra: Sequence[Any] = ()) -> Any:
    """Give ``fn`` (taking ``**options``) the table as its signature and an "Options" section in its
    docstring, so ``help()`` and ``inspect.signature`` show every option with its default."""
    import inspect

    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in fields()
    ]
    fn.__signature__ = sig.replace(parameters=params)
    doc = fn.__doc__ or ""
    margins = [len(x) - len(x.lstrip()) for x in doc.splitlines()[1:] if x.strip()]
    pad = " " * min(margins, default=0)
    lines = ["", "", "Options (the settings table, :class:`llmri.settings.CaptureSettings`)", "-" * 66]
    for f in fields():
        lines.append(f"{f.name} : {f.type}, default {f.default!r}")
        lines.append(f"    {f.metadata['help']}")
    fn.__doc__ = doc.rstrip() + "\n".join(pad + x if x else x for x in lines) + "\n"
    return fn
