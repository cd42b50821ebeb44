"""Live chat's steering (docs/live.md, "Steering"): a turn's ``settings.steer``, checked, and the
records it becomes on the engine's model; and ``rerun``, a recorded answer asked again (its messages,
settings and seed) as a new session naming it as its baseline.

``settings.steer`` is ``{"kind", "layers": [int, ...], "scale": number}`` and, by kind:
``"neuron"``: ``"neuron": int`` (a unit vector along that residual dimension); ``"prompts"``:
``"positive"`` / ``"negative"``: short lists of prompts, made into a direction on the spot by
:func:`llmri.direction` (mean difference at each prompt's last position); ``"direction"``: ``"name"``,
one of the saved directions the viewer was started with (``llmri view --model ... --direction FILE``);
``"feature"``: ``"sae": name, "feature": int``, an SAE feature's decoder row (:meth:`llmri.SAE.direction`)
of one of the SAEs live chat records (``llmri view --model ... --sae PATH``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..._errors import CaptureError
from .requests import _number, check_request, shown

if TYPE_CHECKING:
    from ...store import SessionReader
    from .protocol import ChatSettings

KINDS = ("neuron", "prompts", "direction", "feature")
#: Bounds on a steer request: prompts per side, characters per prompt, layers, |scale|.
MAX_PROMPTS, MAX_PROMPT_CHARS, MAX_LAYERS, MAX_SCALE = 16, 500, 64, 1000.0


def _prompts(value: Mapping[str, Any], side: str) -> list[str]:
    xs = value.get(side)
    if not isinstance(xs, list) or not 0 < len(xs) <= MAX_PROMPTS:
        raise CaptureError(f"steer: {side} must be a list of 1 to {MAX_PROMPTS} prompts")
    if not all(isinstance(x, str) and x.strip() and len(x) <= MAX_PROMPT_CHARS for x in xs):
        raise CaptureError(f"steer: each {side} prompt must be non-empty text of at most {MAX_PROMPT_CHARS} characters")
    return [str(x) for x in xs]


def check_turn(data: Any, engine: Any) -> tuple[list[dict[str, str]], ChatSettings]:
    """A ``chat`` message checked: :func:`~llmri.viewer.live.check_request` and its ``settings.steer``."""
    messages, settings = check_request(data, engine)
    raw = data.get("settings") if isinstance(data, dict) else None
    steer = check_steer(raw.get("steer") if isinstance(raw, dict) else None, engine)
    if steer is not None:
        settings["steer"] = steer
    return messages, settings


def check_steer(value: Any, engine: Any) -> dict[str, Any] | None:
    """``settings.steer`` checked against ``engine`` (its layers, width and saved directions), or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CaptureError("steer must be an object")
    if not getattr(engine, "steerable", False):
        raise CaptureError("this model's backend applies no steering (it needs --backend hf or llama.cpp)")
    kind = value.get("kind")
    if kind not in KINDS:
        raise CaptureError(f"steer: kind must be one of {', '.join(KINDS)}, got {shown(kind)}")
    n_layers, d_model = int(engine.n_layers or 0), int(engine.d_model or 0)
    layers = value.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise CaptureError(f"steer: layers must be a list of 1 to {MAX_LAYERS} layers")
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n_layers for x in layers):
        raise CaptureError(f"steer: each layer must be a whole number from 0 to {n_layers - 1}")
    out: dict[str, Any] = {"kind": kind, "layers": sorted(set(layers))}
    out["scale"] = _number(value, "scale", 4.0, -MAX_SCALE, MAX_SCALE)
    if kind == "neuron":
        i = value.get("neuron")
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < d_model:
            raise CaptureError(f"steer: neuron must be a whole number from 0 to {d_model - 1}, got {shown(i)}")
        out["neuron"] = i
    elif kind == "prompts":
        out["positive"], out["negative"] = _prompts(value, "positive"), _prompts(value, "negative")
    elif kind == "feature":
        saes = {sae.name: sae for sae in getattr(engine, "saes", None) or []}
        name, f = value.get("sae"), value.get("feature")
        if not isinstance(name, str) or name not in saes:
            have = ", ".join(saes) or "none: start the viewer with --sae PATH"
            raise CaptureError(f"steer: no SAE {shown(name)} in live chat (it has: {have})")
        d_sae = int(saes[name].d_sae)
        if not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < d_sae:
            raise CaptureError(f"steer: feature must be a whole number from 0 to {d_sae - 1}, got {shown(f)}")
        out["sae"], out["feature"] = name, f
    else:
        name = value.get("name")
        if not isinstance(name, str) or name not in engine.directions:
            have = ", ".join(engine.directions) or "none: start the viewer with --direction FILE"
            raise CaptureError(f"steer: no saved direction {shown(name)} (saved: {have})")
        out["name"] = name
    return out


def steer_records(
    spec: Mapping[str, Any] | None, model: Any, directions: Mapping[str, Any], backend: str, saes: Any = ()
) -> list[Any]:
    """The steering record of a checked ``spec`` on ``model`` (runs the model for ``"prompts"``;
    ``saes``: the engine's, for ``"feature"``)."""
    import numpy as np

    from ...interventions import direction, steer

    if not spec:
        return []
    layers, scale = list(spec["layers"]), float(spec["scale"])
    if spec["kind"] == "neuron":
        v = np.zeros(int(model.d_model), dtype=np.float32)
        v[int(spec["neuron"])] = 1.0
        return [steer(v, layers=layers, scale=scale)]
    if spec["kind"] == "prompts":
        d = direction(model, spec["positive"], spec["negative"], layers=layers, backend=backend)
        return [steer(d, layers=layers, scale=scale)]
    if spec["kind"] == "feature":
        sae = next(x for x in saes if x.name == spec["sae"])
        return [steer(sae.direction(int(spec["feature"]), layers=layers), layers=layers, scale=scale)]
    return [steer(directions[spec["name"]], layers=layers, scale=scale)]


def rerun_request(r: SessionReader, data: Mapping[str, Any], fingerprint: str | None) -> dict[str, Any]:
    """A ``chat`` message asking ``r``'s question again: its messages, generation settings and seed,
    signals and reducer (so its frames compare with ``r``'s), ``data``'s ``settings.steer``.
    ``fingerprint``: the engine's model's, which must be the one ``r`` was recorded on."""
    m = r.meta
    msgs = m.get("messages")
    if m.get("chat_only") or not m.get("chat") or not isinstance(msgs, list) or not msgs:
        raise CaptureError("only a chat answer recorded with activations can be re-run")
    recorded = (m.get("model") or {}).get("fingerprint") if isinstance(m.get("model"), dict) else None
    if not fingerprint or recorded != fingerprint:
        raise CaptureError("this answer was recorded on another model than the viewer's: it cannot be re-run here")
    gen = m.get("generation") or {}
    raw = data.get("settings")
    steer_spec = raw.get("steer") if isinstance(raw, dict) else None
    red = m.get("reducer") or {}
    settings = {k: gen.get(k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    settings.update(signals=list(m.get("signals") or []), reducer=red.get("kind"), steer=steer_spec)
    settings.update(conversation=m.get("conversation"), turn=m.get("turn"))
    return {"messages": msgs, "settings": settings}
