"""Paired sessions: ``llmri.rerun``, the paired session of a captured one from its record alone
(prompt, settings, seed) with other interventions, naming its baseline (``meta["baseline"]``); and
``llmri.patching``, the patching sweep of a clean / corrupt pair, stored with the pair."""

from __future__ import annotations

from typing import Any

from .._errors import CaptureError
from ..interventions import as_records, from_meta
from ..store import Session
from .probes import probes_from_meta


def rerun_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The capture options a session's meta records (generation, reducer, signals, backend, readouts, probes)."""
    gen = dict(meta.get("generation") or {})
    red = meta.get("reducer") or {}
    opts: dict[str, Any] = {
        "max_new_tokens": gen.get("max_new_tokens"),
        "temperature": gen.get("temperature"),
        "top_p": gen.get("top_p"),
        "seed": gen.get("seed"),
        "stop": tuple(gen.get("stop") or ()),
        "ignore_eos": gen.get("ignore_eos"),
        "backend": meta.get("backend"),
        "signals": tuple(meta.get("signals") or ()) or None,
        "reducer": red.get("kind"),
        "tile": tuple(red["tile"]) if red.get("tile") else None,
        "reducer_seed": red.get("seed"),
        "frame_dtype": meta.get("frame_dtype"),
        "lens": "lens" in meta,
        "attention": "attention" in meta,
        "probes": probes_from_meta(meta) or None,
    }
    return {k: v for k, v in opts.items() if v is not None}


def rerun(
    session: Any,
    interventions: Any = None,
    *,
    model: Any = None,
    store: Any = None,
    meta: dict[str, Any] | None = None,
    **options: Any,
) -> Session:
    """Capture ``session``'s prompt again with the same settings and seed, and ``interventions``.

    Parameters
    ----------
    session:
        A captured session (its meta is all that is read).
    interventions:
        The new run's records (``None``: the session's own, so the run reproduces it; ``[]``: none).
    model:
        The model (default: loaded from the path the session records); its fingerprint must be
        the session's.
    store, meta, options:
        As :func:`llmri.capture`; ``options`` override the recorded settings.

    Returns
    -------
    Session
        Its ``meta["baseline"]`` is ``session``'s id.
    """
    from .stream import capture

    m = dict(session.meta)
    if m.get("chat_only"):
        raise CaptureError("a chat-only session has no activations to re-run")
    prompt = m.get("messages") if m.get("chat") else m.get("prompt")
    if not prompt:
        raise CaptureError("the session records neither its prompt nor its messages: it cannot be re-run")
    recorded = m.get("model") or {}
    if model is None:
        model = recorded.get("path") or None
        if model is None:
            raise CaptureError("the session records no model path (a wrapped model): pass model=")
        if m.get("backend") == "llama.cpp":
            model = str(model)
    fp = getattr(model, "fingerprint", None)
    if fp and recorded.get("fingerprint") and fp != recorded["fingerprint"]:
        raise CaptureError(
            f"the session was captured on another model (fingerprint {recorded['fingerprint']}, this one's {fp})"
        )
    records = from_meta(m) if interventions is None else as_records(interventions)
    opts = {**rerun_options(m), "interventions": records, **options}
    if not m.get("chat"):
        opts.setdefault("chat", False)
    extra = {**(meta or {}), "baseline": m.get("id")}
    return capture(model, prompt, store=store, meta=extra, **opts)


def patching(
    model: Any,
    clean: str,
    corrupt: str,
    metric: Any = "logit_diff",
    targets: Any = (" Paris", " Rome"),
    signals: Any = ("resid", "attn", "mlp"),
    *,
    layers: Any = None,
    batch: int = 64,
    store: Any = None,
    **options: Any,
) -> Any:
    """The layer x position activation-patching sweep of ``corrupt`` from ``clean``
    (:func:`llmri.interventions.patching.sweep`, its forwards batched), returned as a
    :class:`~llmri.interventions.patching.PatchingResult`. With ``store``, both prompts are captured
    there too (``options`` as :func:`llmri.capture`; no generation unless ``max_new_tokens`` says)
    and the corrupt session holds the sweep (``meta["patching"]``, read back by
    ``PatchingResult.of(session)``) and the clean one's id (``meta["baseline"]``)."""
    from ..interventions.patching import sweep
    from .stream import capture

    result = sweep(model, clean, corrupt, metric, targets, signals, layers=layers, batch=batch)
    if store is not None:
        opts = {"max_new_tokens": 0, "chat": False, **options}
        base = capture(model, clean, store=store, **opts)
        capture(model, corrupt, store=store, meta={"baseline": base.meta.get("id"), "patching": result.to_dict()},
                **opts)  # fmt: skip
    return result
