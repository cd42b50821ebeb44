"""Interventions as data: small frozen records (kind, site, positions, scale, the vector itself) that a
run can be rebuilt from, checked when built for what needs no model (STYLE 18)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._errors import CaptureError
from ..frame import SIGNALS
from .vector import Vector

#: The named position sets: every position, the prompt's, the generated ones, the prompt's last
#: (the one whose output predicts the first generated token).
POSITION_NAMES = ("all", "prompt", "generated", "last")
#: What ``Steer.norm`` takes: ``None`` (add ``scale * direction``) or ``"match"`` (scale the unit
#: direction by each position's own norm, so ``scale`` is relative to the residual).
NORMS = ("match",)

Positions = str | tuple[int, ...]


def _whole(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_layers(layers: Any) -> tuple[int, ...]:
    """An int, a range or a list of distinct layer indices >= 0, as a tuple (in the order given)."""
    items = [layers] if _whole(layers) else layers
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (Sequence, range)):
        raise CaptureError(f"layers must be an int, a range or a list of ints, got {layers!r:.80}")
    out = tuple(int(x) for x in items if _whole(x))
    if len(out) != len(items) or not out:
        raise CaptureError(f"layers must be one or more whole numbers, got {layers!r:.80}")
    if min(out) < 0:
        raise CaptureError(f"layers count from 0, got {min(out)}")
    if len(set(out)) != len(out):
        raise CaptureError(f"layers are listed twice in {list(out)}")
    return out


def check_positions(positions: Any) -> Positions:
    """A name from :data:`POSITION_NAMES`, or absolute position indices >= 0 (sorted, distinct)."""
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            raise CaptureError(f"unknown positions {positions!r} (choose from {', '.join(POSITION_NAMES)} or indices)")
        return positions
    items = [positions] if _whole(positions) else positions
    if not isinstance(items, (Sequence, range)) or isinstance(items, bytes):
        raise CaptureError(f"positions must be a name or a list of indices, got {positions!r:.80}")
    out = tuple(sorted({int(x) for x in items if _whole(x)}))
    if len(out) != len(set(items)) or not out or out[0] < 0:
        raise CaptureError(f"positions must be whole numbers >= 0, got {positions!r:.80}")
    return out


def check_signal(signal: Any) -> str:
    if signal not in SIGNALS:
        raise CaptureError(f"unknown signal {signal!r} (choose from {', '.join(SIGNALS)})")
    return str(signal)


def _finite(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
        raise CaptureError(f"{name} must be a finite number, got {x!r:.80}")
    return float(x)


def _check_rows(vector: Vector, layers: tuple[int, ...]) -> None:
    if len(vector.shape) == 2 and vector.shape[0] != len(layers):
        raise CaptureError(f"a direction per layer needs {len(layers)} rows (one per layer), got {vector.shape[0]}")


def _positions_dict(p: Positions) -> Any:
    return p if isinstance(p, str) else list(p)


@dataclass(frozen=True)
class Steer:
    """Add ``scale * direction`` to ``signal``'s output at ``layers`` and ``positions``; with
    ``norm="match"`` the unit direction times each position's own norm times ``scale``."""

    kind: ClassVar[str] = "steer"
    direction: Vector
    layers: tuple[int, ...]
    scale: float = 1.0
    signal: str = "resid"
    positions: Positions = "generated"
    norm: str | None = None
    #: the fingerprint of the model a :class:`~.direction.Direction` was made on (``None``: any)
    model: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "direction", Vector.of(self.direction))
        set_(self, "layers", check_layers(self.layers))
        set_(self, "scale", _finite("scale", self.scale))
        set_(self, "signal", check_signal(self.signal))
        set_(self, "positions", check_positions(self.positions))
        if self.norm is not None and self.norm not in NORMS:
            raise CaptureError(f"norm must be None or 'match', got {self.norm!r:.80}")
        _check_rows(self.direction, self.layers)
        if self.norm == "match" and not (np.linalg.norm(self.direction.array(), axis=-1) > 0).all():
            raise CaptureError("norm='match' needs a direction that is not zero")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signal": self.signal,
            "layers": list(self.layers),
            "positions": _positions_dict(self.positions),
            "scale": self.scale,
            "norm": self.norm,
            "direction": self.direction.to_dict(),
            **({} if self.model is None else {"model": self.model}),
        }

    def describe(self) -> str:
        norm = f" norm={self.norm}" if self.norm else ""
        return (
            f"steer {self.signal} layers {_layers_text(self.layers)} positions {_positions_text(self.positions)} "
            f"scale {self.scale:g}{norm} {self.direction.describe()}"
        )


@dataclass(frozen=True)
class Ablate:
    """Set ``signal``'s output at ``layers`` and ``positions`` to ``value`` (``0.0`` or ``"mean"``,
    the calibration text's mean): all of it, the ``neurons`` listed (``[]``: none, a no-op), or its
    component along ``direction`` (directional ablation). ``mean``: the calibration means themselves,
    one row per layer; a capture fills it in the record it stores, so the run is rebuilt from the
    record alone (whatever calibration text made it)."""

    kind: ClassVar[str] = "ablate"
    layers: tuple[int, ...]
    signal: str
    neurons: tuple[int, ...] | None = None
    value: float | str = 0.0
    direction: Vector | None = None
    positions: Positions = "all"
    model: str | None = None
    mean: Vector | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "layers", check_layers(self.layers))
        set_(self, "signal", check_signal(self.signal))
        set_(self, "positions", check_positions(self.positions))
        if self.value != "mean":
            set_(self, "value", _finite("value (a number or 'mean')", self.value))
        if self.mean is not None:
            if self.value != "mean":
                raise CaptureError("ablate: calibration means go with value='mean'")
            set_(self, "mean", Vector.of(self.mean))
            if len(self.mean.shape) != 2 or self.mean.shape[0] != len(self.layers):
                raise CaptureError(f"ablate: the calibration means need {len(self.layers)} rows (one per layer)")
        if self.neurons is not None:
            items: Any = [self.neurons] if _whole(self.neurons) else self.neurons
            if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, range)):
                raise CaptureError(f"neurons must be a list of indices, got {self.neurons!r:.80}")
            got = tuple(sorted({int(x) for x in items if _whole(x)}))
            if len(got) != len(set(items)) or (got and got[0] < 0):
                raise CaptureError(f"neurons must be distinct whole numbers >= 0, got {self.neurons!r:.80}")
            set_(self, "neurons", got)
        if self.direction is not None:
            if self.neurons is not None:
                raise CaptureError("ablate takes neurons or a direction, not both")
            set_(self, "direction", Vector.of(self.direction))
            _check_rows(self.direction, self.layers)
            if not (np.linalg.norm(self.direction.array(), axis=-1) > 0).all():
                raise CaptureError("a direction to ablate cannot be zero")

    @property
    def is_noop(self) -> bool:
        """Ablating no neuron."""
        return self.neurons == ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signal": self.signal,
            "layers": list(self.layers),
            "positions": _positions_dict(self.positions),
            "neurons": None if self.neurons is None else list(self.neurons),
            "value": self.value,
            "direction": None if self.direction is None else self.direction.to_dict(),
            **({} if self.model is None else {"model": self.model}),
            **({} if self.mean is None else {"mean": self.mean.to_dict()}),
        }

    def describe(self) -> str:
        if self.direction is not None:
            what = f"along {self.direction.describe()}"
        else:
            what = "all neurons" if self.neurons is None else f"neurons {_layers_text(self.neurons)}"
        return (
            f"ablate {self.signal} layers {_layers_text(self.layers)} positions {_positions_text(self.positions)} "
            f"{what} to {self.value if isinstance(self.value, str) else format(self.value, 'g')}"
        )


@dataclass(frozen=True)
class Patch:
    """Replace ``signal``'s output at ``layers`` and ``positions`` with another run's: ``values``
    float32 ``[len(layers) * len(at), d_model]`` (layer-major) at absolute positions ``at``, or a
    ``source`` prompt run on the spot (same model, unedited) when the capture opens."""

    kind: ClassVar[str] = "patch"
    layers: tuple[int, ...]
    signal: str = "resid"
    positions: Positions = "all"
    source: str | None = None
    values: Vector | None = None
    at: tuple[int, ...] | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "layers", check_layers(self.layers))
        set_(self, "signal", check_signal(self.signal))
        set_(self, "positions", check_positions(self.positions))
        if self.positions in ("generated", "last"):
            raise CaptureError("patch positions are 'all', 'prompt' or indices (the source's positions)")
        if (self.source is None) == (self.values is None):
            raise CaptureError("a patch takes a source prompt or the source's values, one of them")
        if self.values is not None:
            set_(self, "values", Vector.of(self.values))
            at = tuple(int(x) for x in self.at or ())
            set_(self, "at", at)
            if self.values.shape[0] != len(self.layers) * len(at):
                raise CaptureError(f"a patch's values need {len(self.layers)} x {len(at)} rows")

    @property
    def direction(self) -> Vector | None:
        """The values, so the width checks of every record apply to them."""
        return self.values

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signal": self.signal,
            "layers": list(self.layers),
            "positions": _positions_dict(self.positions),
            "source": self.source,
            "values": None if self.values is None else self.values.to_dict(),
            "at": None if self.at is None else list(self.at),
            **({} if self.model is None else {"model": self.model}),
        }

    def describe(self) -> str:
        n = len(self.at or ())
        src = f"from {self.source!r:.40}" if self.source is not None else f"from values at {n} positions"
        where = f"layers {_layers_text(self.layers)} positions {_positions_text(self.positions)}"
        return f"patch {self.signal} {where} {src}"


#: An intervention record.
Intervention = Steer | Ablate | Patch
KINDS: dict[str, type[Steer] | type[Ablate] | type[Patch]] = {"steer": Steer, "ablate": Ablate, "patch": Patch}


def _layers_text(xs: Sequence[int]) -> str:
    xs = list(xs)
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}-{xs[-1]}"
    return ",".join(map(str, xs)) or "none"


def _positions_text(p: Positions) -> str:
    return p if isinstance(p, str) else _layers_text(p)


def _from_direction(direction: Any, layers: Any) -> tuple[Any, Any, str | None]:
    """``(vector, layers, model)`` of a :class:`~.direction.Direction` at ``layers`` (default: all of
    its layers), or of a plain vector as it is."""
    if not getattr(direction, "is_direction", False):  # a Direction (.direction imports this module)
        if layers is None:
            raise CaptureError("layers is needed with a plain vector (a Direction brings its own)")
        return Vector.of(direction), layers, None
    chosen = direction.layers if layers is None else check_layers(layers)
    return Vector.of(direction.at(chosen)), chosen, direction.model


def steer(
    direction: Any,
    layers: Any = None,
    scale: float = 1.0,
    signal: str = "resid",
    positions: Any = "generated",
    norm: str | None = None,
) -> Steer:
    """A steering record: add ``scale * direction`` to ``signal`` at ``layers`` (an int, a range, a
    list) and ``positions`` (``"all"``, ``"prompt"``, ``"generated"``, ``"last"`` or indices).
    ``direction``: a :class:`~llmri.interventions.Direction` (its vectors at ``layers``, default
    all of its layers; a capture on a model with another fingerprint refuses it), or a tensor /
    array of the model's width, one for all layers or one row per layer."""
    vec, layers, model = _from_direction(direction, layers)
    return Steer(direction=vec, layers=layers, scale=scale, signal=signal, positions=positions, norm=norm, model=model)


def ablate(
    layers: Any,
    signal: str,
    neurons: Any = None,
    value: float | str = 0.0,
    direction: Any = None,
    positions: Any = "all",
) -> Ablate:
    """An ablation record: set ``signal`` at ``layers`` to ``value`` (``0.0`` or ``"mean"``) — all of
    it, the ``neurons`` listed, or its component along ``direction``."""
    vec, model = None, None
    if direction is not None:
        vec, layers, model = _from_direction(direction, layers)
    return Ablate(
        layers=layers, signal=signal, neurons=neurons, value=value, direction=vec, positions=positions, model=model
    )


def patch(source: Any, layers: Any, signal: str = "resid", positions: Any = "all") -> Patch:
    """A patching record: ``signal`` at ``layers`` and ``positions`` (``"all"``, ``"prompt"``: every
    position both runs have; or indices) replaced by another run's. ``source``: a prompt, run on
    the spot on the same model, or a session holding full vectors (``reducer="neurons"``,
    ``frame_dtype="float32"``) made on that model."""
    if isinstance(source, str):
        return Patch(layers=layers, signal=signal, positions=positions, source=source)
    meta = getattr(source, "meta", None)
    if not isinstance(meta, Mapping):
        raise CaptureError(f"a patch source is a prompt or a session, got {type(source).__name__}")
    red, model = meta.get("reducer") or {}, meta.get("model") or {}
    if red.get("kind") != "neurons" or meta.get("frame_dtype") != "float32":
        raise CaptureError(
            "a patch source session needs full vectors: capture it with reducer='neurons', frame_dtype='float32'"
        )
    if signal not in (meta.get("signals") or ()):
        raise CaptureError(f"the source session does not record {signal!r}")
    d, n = int(model.get("d_model") or 0), len(source)
    pos = check_positions(positions)
    at = tuple(range(n)) if isinstance(pos, str) else pos
    if at and max(at) >= n:
        raise CaptureError(f"patch: position {max(at)} is past the source session's {n} positions")
    lay = check_layers(layers)
    frames = np.asarray(source.frames(signal), dtype=np.float32)
    a = frames.reshape(frames.shape[0], frames.shape[1], -1)[:, :, :d]  # [T, L, d]
    vals = a[list(at)][:, list(lay)].transpose(1, 0, 2).reshape(-1, d)
    return Patch(layers=lay, signal=signal, positions=pos, values=Vector.of(vals), at=at,
                 model=model.get("fingerprint") or None)  # fmt: skip


def from_dict(d: Mapping[str, Any]) -> Intervention:
    """The record :meth:`Steer.to_dict` / :meth:`Ablate.to_dict` wrote (or a JSON copy of it)."""
    if not isinstance(d, Mapping) or d.get("kind") not in KINDS:
        kind = d.get("kind") if isinstance(d, Mapping) else type(d).__name__
        raise CaptureError(f"unknown intervention kind {kind!r} (choose from {', '.join(KINDS)})")
    args = {k: v for k, v in d.items() if k != "kind"}
    positions = args.get("positions")
    if isinstance(positions, list):
        args["positions"] = tuple(positions)
    for key in ("direction", "values", "mean"):
        if args.get(key) is not None:
            args[key] = Vector.from_dict(args[key])
    if isinstance(args.get("at"), list):
        args["at"] = tuple(args["at"])
    try:
        return KINDS[str(d["kind"])](**args)
    except TypeError as exc:
        raise CaptureError(f"a stored {d['kind']} record does not fit: {exc}") from None


def as_records(items: Any) -> tuple[Intervention, ...]:
    """``interventions=`` checked: a list of records (or their dicts), as a tuple."""
    if items is None:
        return ()
    if isinstance(items, (Steer, Ablate, Patch, Mapping)):
        items = [items]
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise CaptureError(f"interventions must be a list of llmri.steer(...) / llmri.ablate(...), got {items!r:.80}")
    out: list[Intervention] = []
    for x in items:
        if isinstance(x, Mapping):
            x = from_dict(x)
        if not isinstance(x, (Steer, Ablate, Patch)):
            raise CaptureError(f"an intervention must be llmri.steer(...) or llmri.ablate(...), got {type(x).__name__}")
        out.append(x)
    return tuple(out)


def from_meta(meta: Mapping[str, Any]) -> tuple[Intervention, ...]:
    """The interventions a session's meta records (``meta["interventions"]``; none: ``()``)."""
    return tuple(from_dict(d) for d in meta.get("interventions") or ())
