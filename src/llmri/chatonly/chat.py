"""ChatOnlyStream: one answer from an OpenAI-compatible server, as a FrameStream of rows."""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from typing import Any

from .._errors import CaptureError
from ..capture.framestream import FrameStream
from ..capture.messages import check_messages
from ..frame import Frame
from ..settings import CHAT_DEFAULTS
from .events import AnswerReader, ChatServer
from .rows import ENTROPY_ESTIMATE, Rows

DEFAULT_MAX_NEW_TOKENS = CHAT_DEFAULTS.max_new_tokens  # a conversation's default (the settings table)


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A string becomes one user message; a list is checked by :func:`~llmri.capture.messages.check_messages`."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return check_messages(prompt)


class ChatOnlyStream(FrameStream):
    """An iterable of :class:`~llmri.frame.Frame`, one per row (prompt rows first; see
    :mod:`llmri.chatonly` for what the rows and the session metadata hold).

    Built by :meth:`ChatOnlyClient.stream` or :func:`chat_only_stream`. The constructor validates
    the messages and settings and, with ``store``, creates the session (``session_id``) but does
    not touch the network: iterating does. The prompt rows come at once; then the request is sent
    from a worker thread, and each generated row is yielded as its chunk arrives. ``stop()``
    (thread-safe) ends the answer at once, keeping what was yielded: the connection is closed, which
    tells the server to stop generating, and the session is ``complete`` with ``stop_reason``
    ``"stopped"``. ``close()`` does the same from outside an iteration. A failure raises
    :class:`~llmri.CaptureError` (one line) and closes the session as ``interrupted``.

    Parameters
    ----------
    client:
        The server to ask (:class:`ChatOnlyClient`).
    messages:
        A string (one user message) or a list of ``{"role", "content"}`` dicts.
    max_new_tokens:
        OpenAI's ``max_tokens``.
    temperature, top_p, seed:
        Sampling settings sent as they are (``temperature=0`` asks for greedy; ``seed=None`` sends none).
    stop:
        A string or strings the server stops at.
    logprobs:
        Ask for the chosen token's logprob and the top 5 alternatives; on by default, and dropped
        with one retry if the server rejects them (``meta["logprobs_rejected"]``).
    store:
        A path, URL or :class:`~llmri.store.FrameStore` to record the session in as it streams.
    meta:
        Extra keys for the session metadata.

    Notes
    -----
    See :class:`~llmri.FrameStream` for the lifecycle.
    """

    what = "chat stream"

    def __init__(
        self,
        client: ChatServer,
        messages: Any,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        stop: Sequence[str] | str | None = None,
        logprobs: bool = True,
        store: Any = None,
        meta: dict[str, Any] | None = None,
        _owns_client: bool = False,
    ) -> None:
        self._client = client
        self._owns_client = _owns_client
        try:
            self.messages = _messages(messages)
            super().__init__(self.make_settings(max_new_tokens, temperature, top_p, seed, stop))
            self.meta = self.base_meta(
                model={"name": client.model, "url": client.url},
                backend="openai",
                prompt=messages,
                messages=self.messages,
                chat_only=True,
            )
            self.meta.update(
                entropy_estimate=ENTROPY_ESTIMATE,
                token_ids="session-local: index into meta['vocab']",
                logprobs=None,
            )
            self.attach(store, meta)
        except BaseException:
            self._close_client()
            raise
        self._rows = Rows(client.chat_url)
        self._reader = AnswerReader(
            client,
            self.messages,
            self.settings,
            send_seed=seed is not None,
            logprobs=bool(logprobs),
            stop=self._stop_event,
        )
        self._thread: threading.Thread | None = None

    @property
    def finish_reason(self) -> str | None:
        """The server's ``finish_reason`` (``"stop"``, ``"length"``, ...), once it sent one."""
        return self._rows.finish_reason

    def stop(self) -> None:
        """End the answer at once (thread-safe); rows already yielded are kept."""
        self._stop_event.set()
        self._reader.abort()

    def _close_client(self) -> None:
        if self._owns_client:
            self._client.close()

    # -- the FrameStream hooks -------------------------------------------------------------------
    def _produce(self) -> Generator[Frame, None, None]:
        yield from self._rows.prompt_rows(self.messages)
        if not self._stop_event.is_set():
            self._thread = threading.Thread(target=self._reader.run, name="llmri-chat-only", daemon=True)
            self._thread.start()
        done = False
        while True:
            event = self._reader.next_event()
            if event is None:
                self.stop_reason = "stopped"
                break
            kind, value = event
            if kind == "model":
                self.meta["model"] = {"name": value, "url": self._client.url}
                if self.writer is not None:
                    self.writer.update_meta(model=self.meta["model"])
            elif kind == "no_logprobs":
                self.meta["logprobs_rejected"] = True
            elif kind == "chunk":
                yield from self._rows.chunk_rows(value)
            elif kind == "done":
                done = True
            elif kind == "error":
                raise value
            elif kind == "eof" and not done and self.finish_reason is None:
                raise CaptureError(
                    f"the stream from {self._client.chat_url} ended before the answer did "
                    "(no finish_reason and no [DONE])"
                )
            elif kind == "end":
                break
        if not self.stop_reason:
            self.stop_reason = {"length": "max_new_tokens", "stop": "eos"}.get(self.finish_reason or "", "eos")

    def _release(self) -> None:
        self._stop_event.set()
        self._reader.abort()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_client()

    def _final_meta(self) -> dict[str, Any]:
        end: dict[str, Any] = {
            "stop_reason": self.stop_reason,
            "finish_reason": self.finish_reason,
            "logprobs": self._rows.saw_logprobs,
            "vocab": self._rows.vocab,
        }
        if self._rows.reasoning:
            end["reasoning"] = self._rows.reasoning
        if self.error is not None:
            end["error"] = self.error
        return end
