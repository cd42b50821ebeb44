"""The live chat protocol (``WS /api/live``), its limits and how its JSON messages are written.

Client to server, JSON text messages:

``{"type": "chat", "messages": [{"role", "content"}, ...], "settings": {...}}``
    Start a turn. ``messages`` is the whole conversation (roles ``system``/``user``/``assistant``),
    ending with the user's new message. ``settings``: ``max_new_tokens``, ``temperature``,
    ``top_p``, ``seed``, ``signals`` (list), ``reducer``, ``ignore_eos`` and ``steer``
    (:mod:`~llmri.viewer.live.steering`) in model mode, ``conversation`` and ``turn`` (echoed into the
    session's meta). Refused with ``busy`` while another turn runs (one generation per model at a
    time; every tab sees the running turn and may stop it).
``{"type": "chat", "rerun": "store/session", "settings": {"steer": {...}}}``
    Ask a recorded answer's question again (its messages, settings and seed), steered by
    ``settings.steer`` (:mod:`~llmri.viewer.live.steering`), as a new session naming it as its baseline.
``{"type": "stop"}``
    End the running turn now; everything generated so far is kept (``stop_reason: "stopped"``).
``{"type": "ping"}``
    Answered with ``{"type": "pong"}``.

A message that is not JSON, nested too deeply, larger than :data:`MAX_CLIENT_MESSAGE` or out of range
(numbers are checked as exact integers, so a 400-digit seed is refused, not overflowed) gets one
``error`` line; the socket stays open.

Server to client, JSON text messages: ``hello`` (mode, model, signals, reducers, limits, the running
turn if any), ``started`` (``session`` = ``"store/id"``, ``messages``, ``settings``, ``special_ids``,
``yours``), ``done`` (``session``, ``status``, ``stop_reason``, ``n_frames``), ``error``
(``message``: one line; the server keeps running), ``busy`` (``message``), ``resync`` (this client
fell behind: its queued frames were dropped, the rest of the turn still comes; fetch the gap from
the store over REST), ``pong``, and with ``llmri view --model ... --lens --attention``
``readouts`` (``session``, ``start``, ``stop``; ``lens``: ``{field: [n, ...]}`` of the frames
``start..stop`` as the REST ``/lens`` route gives them, ``top_text`` included; ``attention``:
``{"index", field: [L, H, ...]}`` of the last of those frames only; with ``--sae``, ``sae``:
``{name: {field: [n, ...]}}`` of every frame as the REST ``/features/{sae}`` route gives them), sent
just before the binary message of the same frames. ``hello``'s ``readouts`` lists what the engine
records, its ``defaults`` what a turn gets where the page sends nothing (the settings table's
``CHAT_DEFAULTS``).

Server to client, binary messages: one or more frames in the replay encoding
(:mod:`llmri.viewer.encoding`) with ``kind: "live"``: the array is ``[n, signals, layers, H, W]``
float16 (``[n, 0]`` in chat-only mode), the header has ``session``, ``start``, ``stop``, ``signals``,
``tokens`` (``n`` token records as the REST ``/tokens`` route gives them) and ``t_model`` (Unix time
when the last of these frames left the model, for latency measurements). A token's frame and its
text travel in the same message, so the page can never show the text before the frame. Prompt
frames are batched (up to :data:`PROMPT_BATCH` per message); generated frames go one per message.

Slow clients
------------
Each connection has a send queue bounded in bytes (``client_queue_bytes``,
:class:`~llmri.viewer.live.sendqueue.SendQueue`). A client that cannot keep up (or never reads) gets
its queue dropped and one ``resync`` message instead: the frames are in the store, so it catches up
over REST, and the server's memory stays bounded whatever the client does. Generation never waits
for a client.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

#: Prompt frames sent per message at most (generated frames always go one per message).
PROMPT_BATCH = 32
#: Default bound on the bytes queued for one WebSocket client.
CLIENT_QUEUE_BYTES = 32 << 20
#: Largest client message accepted (a conversation as JSON).
MAX_CLIENT_MESSAGE = 1 << 20
MAX_MESSAGES = 256
MAX_NEW_TOKENS = 2048


class _TurnSettings(TypedDict):
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    conversation: str  # a random id unless the client sent one (64 characters at most)
    turn: int


class ChatSettings(_TurnSettings, total=False):
    """A ``chat`` message's ``settings`` once checked (:func:`~llmri.viewer.live.check_request`); the
    keys below are there only for an engine in ``"model"`` mode (``steer``: :mod:`.steering`;
    ``baseline``: the id of the answer a ``rerun`` asks again)."""

    signals: list[str]
    reducer: str
    ignore_eos: bool
    steer: dict[str, Any]
    baseline: str


def message(**fields: Any) -> str:
    """One server-to-client JSON text message (strict JSON: a NaN is an error, not ``NaN``)."""
    return json.dumps(fields, allow_nan=False, default=str)
