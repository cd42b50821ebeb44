"""The ``openai`` backend (chat-only mode): stream a chat answer from any OpenAI-compatible server and
record it as frames, without activations.

Ollama, LM Studio, llama.cpp's server and vLLM all speak ``POST {base}/chat/completions`` with
``stream: true``. llmri asks for ``logprobs: true, top_logprobs: 5`` and turns the streamed answer
into :class:`~llmri.frame.Frame` objects with no activations (``tiles``, ``norms`` and ``sparsity``
are empty dicts), so the viewer's timeline, token strip and probability panels still work.

What a chat-only session holds
------------------------------
Prompt rows (role ``"prompt"``)
    One row per message of the conversation, text ``"{role}: {content}\\n"``, then one row
    ``"assistant: "`` that stands for the generation prompt (the place where the chat template
    hands over to the model). The server tokenizes with a template llmri cannot see, so the
    prompt has no per-token rows and no statistics: ``id`` is -1, ``logprob``/``entropy`` NaN, no
    alternatives. ``session.prompt_text + session.text`` reads as a transcript.
Generated rows (role ``"generated"``)
    One row per token the server reports in ``logprobs.content``. ``text`` is the text the token
    adds to the answer (the text of all generated rows joined is exactly the streamed answer; a
    token that is only part of a UTF-8 character carries ``""`` and the token completing it carries
    the character). ``logprob`` is the server's log-probability (nats) of the chosen token;
    ``top_probs``/``top_texts`` the top-5 alternatives, most likely first, as probabilities;
    ``entropy`` an *estimate* (see :func:`entropy_lower_bound`). Where the server returns no
    logprobs, each streamed text chunk becomes one row with ``id`` -1 and NaN statistics.
Token ids
    Servers report token strings, not vocabulary ids. ``id`` and ``top_ids`` are session-local:
    the index of the token string in ``meta["vocab"]`` (numbered by first appearance), so the same
    string has the same id within one session; they are not the model's vocabulary ids.

``meta`` carries ``chat_only: True``, ``signals: []``, ``layers: []``, ``tile: [0, 0]``,
``backend: "openai"``, ``model: {"name", "url"}`` (the base URL without credentials, query or
fragment), ``messages``, ``generation`` (the settings), ``logprobs`` (whether the server returned
any), ``finish_reason``, ``stop_reason``, ``vocab`` and, after a failure, ``error``. The API key is
sent upstream as ``Authorization: Bearer`` only: it is never put in ``meta``, a ``repr`` or an
error message.

Errors (refused connection, HTTP errors such as a 404 for an unknown model, timeouts, a malformed
stream) raise :class:`~llmri.CaptureError` with one line; a session being recorded is closed as
``interrupted`` with the frames received so far.

Modules: ``client`` (the server: URL, model, key, HTTP), ``events`` (the request and the event
stream, read on a worker thread), ``rows`` (chunks to rows, the entropy estimate), ``errors``
(failures as one line), ``chat`` (:class:`ChatOnlyStream`), ``api`` (:func:`chat_only` and
:func:`chat_only_stream`). It is not in the
``BACKENDS`` registry: that lists the backends behind :class:`~llmri.backends.base.Backend`, which
record activations.
"""

from .api import chat_only, chat_only_stream
from .chat import DEFAULT_MAX_NEW_TOKENS, ChatOnlyStream
from .client import DEFAULT_TIMEOUT, ChatOnlyClient
from .rows import entropy_lower_bound

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_TIMEOUT",
    "ChatOnlyClient",
    "ChatOnlyStream",
    "chat_only",
    "chat_only_stream",
    "entropy_lower_bound",
]
