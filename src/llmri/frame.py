"""The values that flow from a capture to a store: one Token and one Frame per token position."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Signal names, in canonical order. ``resid`` is a block's output hidden state, ``attn`` and
#: ``mlp`` the outputs of its attention and MLP sub-layers (before they are added to the residual).
SIGNALS: tuple[str, ...] = ("resid", "attn", "mlp")

#: Token roles. Prompt tokens come from the prefill, generated ones from the decode loop.
ROLES: tuple[str, ...] = ("prompt", "generated")

TOP_K = 5

#: What a frame's tiles can be stored as (``frame_dtype=``; docs/FORMAT.md, "Frame dtypes"): ``float16``
#: (the default, 2 bytes: overflows past ±65,504), ``bfloat16`` (2 bytes, float32's range, 8 bits of
#: precision), ``float32`` (exact).
FRAME_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
FRAME_DTYPE = "float16"
#: The numpy dtype a frame's tiles have in memory, per frame dtype: numpy has no bfloat16, so those tiles
#: are float32 arrays whose values are all exactly representable in bfloat16.
FRAME_NUMPY: dict[str, type] = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32}


def frame_dtype_of(meta: dict[str, Any]) -> str:
    """A session's frame dtype: ``meta["frame_dtype"]``, ``float16`` for sessions written before it existed."""
    name = meta.get("frame_dtype") or FRAME_DTYPE
    if name not in FRAME_DTYPES:
        raise ValueError(f"unknown frame_dtype {name!r} (this llmri reads {', '.join(FRAME_DTYPES)})")
    return str(name)


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    a = np.ascontiguousarray(values, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Token:
    """One token position.

    ``logprob``, ``entropy`` and the ``top_*`` alternatives describe the next-token distribution
    that *predicted* this token (computed at the previous position); they are NaN / empty for the
    very first position, which nothing predicted. ``text`` is the text this token adds to the
    decoded stream: byte-level pieces that only complete a character together are rendered on the
    token that completes it (the others carry ``""``).
    """

    index: int
    id: int
    text: str
    role: str
    logprob: float = float("nan")
    entropy: float = float("nan")
    top_ids: tuple[int, ...] = ()
    top_probs: tuple[float, ...] = ()
    top_texts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if x != x else float(x)

        return {
            "index": self.index,
            "id": self.id,
            "text": self.text,
            "role": self.role,
            "logprob": num(self.logprob),
            "entropy": num(self.entropy),
            "top": [
                {"id": i, "prob": float(p), "text": t}
                for i, p, t in zip(
                    self.top_ids, self.top_probs, self.top_texts or [""] * len(self.top_ids), strict=False
                )
            ],
        }


#: The arrays of the logit lens, per position: ``top_ids`` / ``top_probs`` ``[L, k]``, ``next_prob``,
#: ``next_rank``, ``entropy`` ``[L]`` (docs/readouts.md).
LENS_FIELDS: tuple[str, ...] = ("top_ids", "top_probs", "next_prob", "next_rank", "entropy")
#: The lens's optional text field: ``top_text`` ``[L, k]``, each top id's text decoded on its own (the
#: capture's tokenizer), so a session reads without it; sessions written before it lack the field.
LENS_TEXT = "top_text"
#: The arrays of attention per head, per position: ``top_pos`` / ``top_weight`` ``[L, H, k]``,
#: ``entropy`` and ``sink`` ``[L, H]``.
ATTENTION_FIELDS: tuple[str, ...] = ("top_pos", "top_weight", "entropy", "sink")
#: dtype of each readout array: ids, ranks and positions int32 (-1 where absent), the rest float32 (NaN).
READOUT_DTYPES: dict[str, type] = {
    "top_ids": np.int32,
    "next_rank": np.int32,
    "top_pos": np.int32,
    "top_probs": np.float32,
    "next_prob": np.float32,
    "entropy": np.float32,
    "top_weight": np.float32,
    "sink": np.float32,
    LENS_TEXT: str,
}


def readout_fill(name: str) -> tuple[type, object]:
    """The numpy dtype and the padding of readout field ``name``: -1 for ids, NaN for floats,
    ``""`` for texts (an object array of Python strings)."""
    dtype = READOUT_DTYPES[name]
    if dtype is str:
        return object, ""
    return dtype, -1 if dtype is np.int32 else np.nan


@dataclass
class LensRow:
    """The logit lens at one position ``t``: what each layer predicts for position ``t + 1``.

    ``top_ids`` int32 / ``top_probs`` float32 ``[L, k]``; ``next_prob`` float32 and ``next_rank``
    int32 ``[L]``: the probability each layer gives the token that came next and its rank (0 is
    top-1), NaN / -1 where there is no next token; ``entropy`` float32 ``[L]`` (nats);
    ``top_text`` ``[L, k]`` (object, str): each top id's text, or None where the capture had none.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    next_prob: np.ndarray
    next_rank: np.ndarray
    entropy: np.ndarray
    top_text: np.ndarray | None = None


@dataclass
class AttentionRow:
    """Attention per head at one query position: ``top_pos`` int32 / ``top_weight`` float32
    ``[L, H, k]`` (the most attended positions, largest weight first; -1 / NaN past the causal
    range, for layers without attention and heads a layer lacks), ``entropy`` (nats) and ``sink``
    (the weight on position 0) float32 ``[L, H]``."""

    top_pos: np.ndarray
    top_weight: np.ndarray
    entropy: np.ndarray
    sink: np.ndarray


@dataclass
class FeatureRow:
    """One SAE's features at one position (docs/sae.md): ``ids`` int32 and ``values`` float16 ``[k]``,
    the strongest features, strongest first (zeros past the active ones); ``l0`` how many features
    are active; ``fvu`` and ``cosine`` the reconstruction's fraction of variance unexplained and cosine."""

    ids: np.ndarray
    values: np.ndarray
    l0: int
    fvu: float
    cosine: float


@dataclass
class ProbeRow:
    """One direction probe at one position (docs/interventions.md, "Watching a direction: probes"):
    float32 ``[L]`` per layer of the session, NaN at a layer the direction has no vector for:
    ``cosine`` of the signal's full vector and the direction, ``projection`` its dot with the unit direction."""

    cosine: np.ndarray
    projection: np.ndarray


@dataclass
class Frame:
    """Everything known about one token position.

    ``tiles[signal]`` is ``[layers, H, W]``, signed, unquantised reduced activations, float16 or
    float32 (:data:`FRAME_NUMPY`: the session's ``frame_dtype``; ±inf where a value overflowed it);
    ``norms[signal]`` and ``sparsity[signal]`` are ``[layers]`` float32 statistics of the full,
    unreduced vectors (L2 norm, and Hoyer sparsity in [0, 1]: 0 dense, 1 one-hot).
    A chat-only frame has no signals at all (empty dicts). ``lens`` and ``attention`` are the
    readouts, where the capture was asked for them (``lens=True``, ``attention=True``); ``sae``
    each SAE's features by its name (``saes=[...]``); ``probes`` each direction probe's row by its
    name (``probes=[...]``).
    """

    token: Token
    tiles: dict[str, np.ndarray] = field(default_factory=dict)
    norms: dict[str, np.ndarray] = field(default_factory=dict)
    sparsity: dict[str, np.ndarray] = field(default_factory=dict)
    lens: LensRow | None = None
    attention: AttentionRow | None = None
    sae: dict[str, FeatureRow] | None = None
    probes: dict[str, ProbeRow] | None = None

    @property
    def index(self) -> int:
        return self.token.index


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    if n == 0:
        return a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
    return a.reshape(n, -1)


class TokenTable:
    """Columnar token table of a session: ``ids``, ``text``, ``role``, ``logprob``, ``entropy``,
    ``top_ids`` ``[n, k]``, ``top_probs`` ``[n, k]``. Indexing returns :class:`Token` objects."""

    def __init__(
        self,
        ids: np.ndarray,
        text: list[str],
        role: list[str],
        logprob: np.ndarray,
        entropy: np.ndarray,
        top_ids: np.ndarray,
        top_probs: np.ndarray,
        top_texts: list[list[str]] | None = None,
    ) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.text = list(text)
        self.role = list(role)
        self.logprob = np.asarray(logprob, dtype=np.float32)
        self.entropy = np.asarray(entropy, dtype=np.float32)
        # reshape(0, -1) is ambiguous for an empty table: keep the given column count there
        self.top_ids = _rows(np.asarray(top_ids, dtype=np.int64), len(self.ids))
        self.top_probs = _rows(np.asarray(top_probs, dtype=np.float32), len(self.ids))
        self.top_texts = top_texts

    @classmethod
    def from_tokens(cls, tokens: list[Token], k: int = TOP_K) -> TokenTable:
        n = len(tokens)
        top_ids = np.full((n, k), -1, dtype=np.int64)
        top_probs = np.full((n, k), np.nan, dtype=np.float32)
        texts: list[list[str]] = []
        for i, t in enumerate(tokens):
            m = min(k, len(t.top_ids))
            top_ids[i, :m] = t.top_ids[:m]
            top_probs[i, :m] = t.top_probs[:m]
            texts.append(list(t.top_texts[:m]))
        return cls(
            ids=np.array([t.id for t in tokens], dtype=np.int64),
            text=[t.text for t in tokens],
            role=[t.role for t in tokens],
            logprob=np.array([t.logprob for t in tokens], dtype=np.float32),
            entropy=np.array([t.entropy for t in tokens], dtype=np.float32),
            top_ids=top_ids,
            top_probs=top_probs,
            top_texts=texts,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Token:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        valid = self.top_ids[i] >= 0
        texts = tuple(self.top_texts[i]) if self.top_texts and i < len(self.top_texts) else ()
        return Token(
            index=i,
            id=int(self.ids[i]),
            text=self.text[i],
            role=self.role[i],
            logprob=float(self.logprob[i]),
            entropy=float(self.entropy[i]),
            top_ids=tuple(int(x) for x in self.top_ids[i][valid]),
            top_probs=tuple(float(x) for x in self.top_probs[i][valid]),
            top_texts=texts,
        )

    def __iter__(self) -> Iterator[Token]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TokenTable({len(self)} tokens: {''.join(self.text)[:60]!r}...)"

    def to_records(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self]


class ReadoutTable:
    """A readout's arrays over a session's positions, token axis first, plus the layer names.

    :class:`LensTable` (``Session.lens()``) and :class:`AttentionTable` (``Session.attention()``)
    name their fields; each is a numpy array of the dtype :data:`READOUT_DTYPES` gives it.
    """

    fields: tuple[str, ...] = ()
    #: Fields a table may lack (None then): a session written before they existed.
    optional: tuple[str, ...] = ()

    def __init__(self, layers: list[str], **arrays: np.ndarray) -> None:
        self.layers = list(layers)
        known = (*self.fields, *self.optional)
        missing = [f for f in self.fields if f not in arrays]
        if missing or set(arrays) - set(known):
            raise ValueError(f"{type(self).__name__}: fields {sorted(arrays)}, expected {list(self.fields)}")
        for name in known:
            value = arrays.get(name)
            if value is None:
                setattr(self, name, None)
                continue
            dtype, _ = readout_fill(name)
            # texts: zarr's strings (numpy StringDType) or a '<U' array, as Python strings
            a = np.asarray(value).astype(object) if dtype is object else np.asarray(value, dtype=dtype)
            setattr(self, name, a)

    def __len__(self) -> int:
        return int(getattr(self, self.fields[0]).shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """``{field: array}``, an optional field only where the table has it."""
        names = (*self.fields, *(f for f in self.optional if getattr(self, f) is not None))
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_rows(cls, rows: list[Any], layers: list[str], shapes: dict[str, tuple[int, ...]]) -> ReadoutTable:
        """Stack per-position rows (:class:`LensRow` / :class:`AttentionRow`), each field padded to
        ``shapes[field]`` (a row's shape) with -1 / NaN / ``""``; an optional field only where
        ``shapes`` names it."""
        out = {}
        for name in (*cls.fields, *(f for f in cls.optional if f in shapes)):
            dtype, fill = readout_fill(name)
            arr: np.ndarray = np.full((len(rows), *shapes[name]), fill, dtype=dtype)
            for i, row in enumerate(rows):
                value = getattr(row, name)
                if value is not None:
                    fit_into(arr[i], value)
            out[name] = arr
        return cls(layers, **out)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{f} {list(a.shape)}" for f, a in self.arrays().items())
        return f"{type(self).__name__}({shapes})"


def fit_into(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy ``src`` into the leading corner of ``dst`` (the rest keeps its padding); raises
    ValueError when ``src`` is larger than ``dst`` on any axis or has another number of axes."""
    src = np.asarray(src)
    if src.ndim != dst.ndim or any(a > b for a, b in zip(src.shape, dst.shape, strict=True)):
        raise ValueError(f"a readout row of shape {list(src.shape)} does not fit {list(dst.shape)}")
    dst[tuple(slice(0, n) for n in src.shape)] = src


class LensTable(ReadoutTable):
    """The logit lens of a session: ``top_ids`` / ``top_probs`` ``[T, L, k]``, ``next_prob``,
    ``next_rank``, ``entropy`` ``[T, L]`` (NaN / -1 where there is no next token), ``layers``;
    ``top_text`` ``[T, L, k]`` (object, str: each top id's text), None for a session captured
    before llmri recorded it."""

    fields = LENS_FIELDS
    optional = (LENS_TEXT,)
    top_text: np.ndarray | None
    top_ids: np.ndarray
    top_probs: np.ndarray
    next_prob: np.ndarray
    next_rank: np.ndarray
    entropy: np.ndarray


class AttentionTable(ReadoutTable):
    """Attention per head of a session: ``top_pos`` / ``top_weight`` ``[T, L, H, k]``, ``entropy``
    and ``sink`` ``[T, L, H]``, ``layers``."""

    fields = ATTENTION_FIELDS
    top_pos: np.ndarray
    top_weight: np.ndarray
    entropy: np.ndarray
    sink: np.ndarray
