"""One live turn: generated on a worker thread, its frames posted as they leave the model."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._errors import LlmriError, one_line
from ..._jsonsafe import json_safe
from ..encoding import encode_array
from .protocol import PROMPT_BATCH, ChatSettings, message

if TYPE_CHECKING:
    from ... import FrameStream
    from ...frame import Frame
    from ...store import FrameStore
    from .engines import Engine

#: How the worker hands a message to every client: ``post(item, session)``; it must never block.
Post = Callable[[bytes | str, str | None], None]


@dataclass
class Turn:
    """The turn being generated: who asked, what, and the stream once it is open."""

    by: int
    messages: list[dict[str, str]]
    settings: ChatSettings
    stream: FrameStream | None = None
    session: str | None = None
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """End the turn soon (thread-safe); before its stream is open, as soon as it opens."""
        with self.lock:
            self.stop_requested = True
            st = self.stream
        if st is not None:
            st.stop()

    def generate(self, engine: Engine, store: Callable[[], FrameStore], store_id: str, post: Post) -> dict[str, Any]:
        """Run the turn to its end (on the worker thread) and return its ``done`` message.

        Opens the engine's stream on ``store()``, posts ``started``, then the frames as they come
        (prompt frames batched), and one ``error`` line if it fails: a failing backend never raises
        out of here.
        """
        key = None
        n = 0
        status = "interrupted"
        try:
            meta = {"live": True, "conversation": self.settings["conversation"], "turn": self.settings["turn"]}
            if self.settings.get("baseline"):  # a re-run answer names the one it asks again
                meta["baseline"] = self.settings["baseline"]
            stream = engine.open(self.messages, self.settings, store(), meta)
            # closed whichever way the turn ends: a failure before its iteration started would leave
            # the session 'recording' (FrameStream.close marks it interrupted)
            with stream:
                with self.lock:
                    self.stream = stream
                    stop_now = self.stop_requested
                if stop_now:
                    stream.stop()
                key = f"{store_id}/{stream.session_id}"
                self.session = key
                n_prompt = len(getattr(stream, "prompt_ids", None) or []) or len(self.messages) + 1
                signals = list(stream.meta.get("signals") or [])
                post(
                    message(
                        type="started",
                        session=key,
                        by=self.by,
                        messages=self.messages,
                        settings=self.settings,
                        signals=signals,
                        special_ids=stream.meta.get("special_ids", []),
                        model=(stream.meta.get("model") or {}).get("name", ""),
                        chat_only=bool(stream.meta.get("chat_only")),
                    ),
                    key,
                )
                batch: list[Frame] = []
                for frame in stream:
                    n += 1
                    batch.append(frame)
                    if frame.token.role == "prompt" and len(batch) < PROMPT_BATCH and frame.index < n_prompt - 1:
                        continue
                    send_readouts(post, key, batch)
                    send_frames(post, key, signals, batch)
                    batch = []
                if batch:
                    send_readouts(post, key, batch)
                    send_frames(post, key, signals, batch)
            status = "complete"
            reason = getattr(stream, "stop_reason", "")
            error = None
        except LlmriError as exc:
            reason, error = f"error: {one_line(exc)}", one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a failing backend must not take the server down
            reason, error = f"error: {type(exc).__name__}", f"generation failed: {type(exc).__name__}: {one_line(exc)}"
        if error is not None:
            post(message(type="error", session=key, message=error), key)
        return {"type": "done", "session": key, "status": status, "stop_reason": reason, "n_frames": n}


def _header_token(frame: Frame) -> dict[str, Any]:
    d: dict[str, Any] = frame.token.to_dict()
    for a in d["top"]:
        if not math.isfinite(a["prob"]):
            a["prob"] = 0.0
    return d


def send_readouts(post: Post, key: str, frames: list[Frame]) -> None:
    """Post the readouts of ``frames`` as one ``readouts`` message, before their frames (so the page
    has them when it draws the newest frame): the lens and SAE features of every frame, attention of
    the last only (a row is ``L * H * k`` pairs; the page reads older ones from the store)."""
    lens = [f.lens for f in frames]
    last = frames[-1].attention
    sae = sae_rows(frames)
    if all(x is None for x in lens) and last is None and not sae:
        return
    doc: dict[str, Any] = {"type": "readouts", "session": key, "start": frames[0].index, "stop": frames[-1].index + 1}
    if sae:
        doc["sae"] = sae
    if all(x is not None for x in lens):
        fields = ("top_ids", "top_probs", "next_prob", "next_rank", "entropy", "top_text")
        doc["lens"] = {name: [getattr(x, name) for x in lens] for name in fields if getattr(lens[0], name) is not None}
    if last is not None:
        doc["attention"] = {
            "index": frames[-1].index,
            **{name: getattr(last, name) for name in ("top_pos", "top_weight", "entropy", "sink")},
        }
    post(message(**json_safe(doc)), key)


def sae_rows(frames: list[Frame]) -> dict[str, dict[str, Any]]:
    """Each SAE's rows of ``frames`` as the REST ``/features/{sae}`` route gives them (``ids``,
    ``values`` ``[n, k]``, ``l0``, ``fvu``, ``cosine`` ``[n]``); ``{}`` where a frame has none."""
    if not frames or any(not f.sae for f in frames):
        return {}
    names = list(frames[0].sae or {})
    fields = ("ids", "values", "l0", "fvu", "cosine")
    return {n: {x: [getattr((f.sae or {})[n], x) for f in frames] for x in fields} for n in names}


def send_frames(post: Post, key: str, signals: Sequence[str], frames: list[Frame]) -> None:
    """Post ``frames`` as one binary ``live`` message (one per frame if together they are too big)."""
    t_model = time.time()
    if signals:
        tiles = np.stack([np.stack([f.tiles[s] for s in signals]) for f in frames])
        tiles = tiles if tiles.dtype == np.float32 else tiles.astype(np.float16)  # float32 frames stay themselves
    else:
        tiles = np.zeros((len(frames), 0), dtype=np.float16)
    header = {
        "kind": "live",
        "session": key,
        "start": frames[0].index,
        "stop": frames[-1].index + 1,
        "signals": list(signals),
        "tokens": [_header_token(f) for f in frames],
        "t_model": t_model,
    }
    try:
        msg = encode_array(tiles, **header)
    except ValueError:
        if len(frames) > 1:
            for f in frames:
                send_frames(post, key, signals, [f])
            return
        # One token too big for a header (a huge text chunk): pages fetch it from the store.
        post(message(type="resync", session=key, reason="a token too large to stream"), key)
        return
    post(msg, key)
