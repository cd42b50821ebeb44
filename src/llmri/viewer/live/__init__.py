"""Live chat for the viewer: type a message, watch each token's frame arrive as the answer streams.

:class:`LiveChat` is the viewer's live plug-in (``create_app(stores, live=LiveChat(...))``). It adds
one WebSocket, ``/api/live``, behind the same Host / Origin / token guards as every other route
(:class:`~llmri.viewer.security.SecurityMiddleware` wraps the whole app). An :class:`Engine` answers
each turn (it opens a stream of frames for messages and settings); two ship here:

* :class:`ModelEngine`: a local model (``llmri view --model SPEC``), recorded with
  :func:`llmri.stream` (activations, all signals the backend offers).
* :class:`ChatOnlyEngine`: an OpenAI-compatible server fixed at launch (``--openai-url``), recorded
  with :class:`~llmri.ChatOnlyStream` (tokens and logprobs, no activations). The URL and
  the API key live only in the server process: the browser can never name another URL, and the
  key is never sent to it (``hello`` carries the URL without credentials or query).

Each turn is one session in the viewer's first store: its prompt is the whole conversation so far
(the chat template applies to the whole history, so the prompt frames of turn *n* show how the
model reads turns 1..n-1), and its generated rows are the new answer. ``meta["conversation"]`` (a
random id) and ``meta["turn"]`` (0, 1, ...) tie the turns together. Frames are appended to the store
as they are generated (crash-consistent: a closed tab, a dropped connection or a killed server
loses at most the uncommitted tail).

Modules: :mod:`.protocol` (the messages and limits), :mod:`.engines`, :mod:`.requests` (the check
of a ``chat`` message), :mod:`.sendqueue` (one client's bounded queue), :mod:`.turn` (the worker),
:mod:`.chat` (:class:`LiveChat`), :mod:`.routes` (the socket).
"""

from __future__ import annotations

from .chat import LiveChat
from .engines import ChatOnlyEngine, Engine, ModelEngine
from .protocol import ChatSettings
from .requests import check_request
from .sendqueue import SendQueue

__all__ = ["ChatOnlyEngine", "ChatSettings", "Engine", "LiveChat", "ModelEngine", "SendQueue", "check_request"]
