"""Chunks of an OpenAI-compatible chat stream turned into rows (:class:`~llmri.frame.Frame` objects
without activations); see :mod:`llmri.chatonly` for what the rows hold."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .._errors import CaptureError
from ..frame import TOP_K, Frame, Token
from .errors import error_message

ENTROPY_ESTIMATE = (
    "lower bound from the server's top logprobs: the known probabilities (top-k, plus the chosen "
    "token when it is not among them) and the remaining mass as one bucket"
)


def entropy_lower_bound(logprobs: Sequence[float]) -> float:
    """Estimate the entropy (nats) of a next-token distribution from a few of its log-probabilities.

    ``logprobs`` are the log-probabilities the server reported (the top-k alternatives, plus the
    chosen token when it is not among them), each for a distinct token. With known probabilities
    ``q_i`` and remainder ``r = 1 - sum(q_i)``, the estimate is ``-sum(q_i ln q_i) - r ln r``: the
    entropy of the distribution with all the unreported tokens merged into one outcome. Merging
    outcomes never raises entropy, so this is a lower bound of the true entropy; it is exact when
    the remainder is a single token, and falls short by at most ``r ln(V - k)`` for a vocabulary of
    ``V`` tokens. When the reported probabilities sum to more than 1 (rounding, or a server that
    reports something else), they are renormalised and ``r`` is 0. Returns NaN when no finite
    log-probability is given.
    """
    qs = [math.exp(lp) for lp in logprobs if lp is not None and not math.isnan(lp) and lp <= 1e-6]
    qs = [min(q, 1.0) for q in qs]
    if not qs:
        return math.nan
    total = sum(qs)
    if total > 1.0:
        qs = [q / total for q in qs]
        rest = 0.0
    else:
        rest = 1.0 - total

    def h(p: float) -> float:
        return -p * math.log(p) if p > 0 else 0.0

    return max(0.0, sum(h(q) for q in qs) + h(rest))


class Rows:
    """Numbers the rows of one answer and gives each token string its session-local id.

    ``url`` is the endpoint named in errors. :attr:`vocab` lists the token strings in the order of
    their ids; :attr:`finish_reason`, :attr:`saw_logprobs` and :attr:`reasoning` describe the
    answer so far.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._vocab: dict[str, int] = {}
        self._index = 0
        self.finish_reason: str | None = None
        self.saw_logprobs = False
        self._reasoning: list[str] = []

    @property
    def vocab(self) -> list[str]:
        return list(self._vocab)

    @property
    def reasoning(self) -> str:
        """The model's streamed reasoning (``reasoning_content``), joined; ``""`` when none came."""
        return "".join(self._reasoning)

    def _local_id(self, text: str) -> int:
        i = self._vocab.get(text)
        if i is None:
            i = self._vocab[text] = len(self._vocab)
        return i

    def _row(self, text: str, role: str, **kw: Any) -> Frame:
        token = Token(index=self._index, text=text, role=role, **kw)
        self._index += 1
        return Frame(token)

    def prompt_rows(self, messages: list[dict[str, str]]) -> list[Frame]:
        """One row per message, then ``"assistant: "`` for the generation prompt."""
        rows = [self._row(f"{m['role']}: {m['content']}\n", "prompt", id=-1) for m in messages]
        rows.append(self._row("assistant: ", "prompt", id=-1))
        return rows

    def _token_row(self, entry: Any, text: str) -> Frame:
        url = self.url
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise CaptureError(f"malformed stream from {url}: a logprobs entry without a token string")
        try:
            lp = float(entry.get("logprob", math.nan))
        except (TypeError, ValueError):
            raise CaptureError(f"malformed stream from {url}: a logprob is not a number") from None
        tops: list[tuple[float, str]] = []
        for alt in entry.get("top_logprobs") or []:
            try:
                alp = float(alt["logprob"])
                atok = str(alt["token"])
            except (KeyError, TypeError, ValueError):
                raise CaptureError(f"malformed stream from {url}: a top_logprobs entry without token/logprob") from None
            if not math.isnan(alp):
                tops.append((alp, atok))
        tops.sort(key=lambda t: -t[0])
        known = [alp for alp, _ in tops]
        if entry["token"] not in {t for _, t in tops} and not math.isnan(lp):
            known.append(lp)  # the chosen token's mass is known too, even outside the top-k
        tops = tops[:TOP_K]
        if tops or not math.isnan(lp):
            self.saw_logprobs = True
        return self._row(
            text,
            "generated",
            id=self._local_id(entry["token"]),
            logprob=lp,
            entropy=entropy_lower_bound(known),
            top_ids=tuple(self._local_id(t) for _, t in tops),
            top_probs=tuple(min(1.0, math.exp(alp)) for alp, _ in tops),
            top_texts=tuple(t for _, t in tops),
        )

    def chunk_rows(self, chunk: Any) -> list[Frame]:
        """The rows of one parsed stream chunk (raises CaptureError, one line, when it is malformed)."""
        url = self.url
        if not isinstance(chunk, dict):
            raise CaptureError(f"malformed stream from {url}: an event is not a JSON object")
        if chunk.get("error") is not None:
            msg = error_message(json.dumps({"error": chunk["error"]}).encode())
            raise CaptureError(f"{url} reported an error mid-answer: {msg or 'no message'}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise CaptureError(f"malformed stream from {url}: a chunk without a 'choices' list")
        rows: list[Frame] = []
        for choice in choices[:1]:  # n = 1: one answer
            if not isinstance(choice, dict):
                raise CaptureError(f"malformed stream from {url}: a choice is not an object")
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise CaptureError(f"malformed stream from {url}: 'delta' is not an object")
            content = delta.get("content") or ""
            if not isinstance(content, str):
                raise CaptureError(f"malformed stream from {url}: 'content' is not a string")
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str):
                self._reasoning.append(thinking)
            lp = choice.get("logprobs")
            entries = lp.get("content") if isinstance(lp, dict) else None
            if entries:
                if not isinstance(entries, list):
                    raise CaptureError(f"malformed stream from {url}: logprobs.content is not a list")
                # Each token takes its own string when that is the next piece of the streamed text;
                # the last takes what is left (so the rows always join to the exact answer).
                rest = content
                for j, entry in enumerate(entries):
                    tok = entry.get("token") if isinstance(entry, dict) else None
                    if j == len(entries) - 1:
                        piece = rest
                    elif isinstance(tok, str) and tok and rest.startswith(tok):
                        piece = tok
                    else:
                        piece = ""
                    rest = rest[len(piece) :]
                    rows.append(self._token_row(entry, piece))
            elif content:
                rows.append(self._row(content, "generated", id=-1))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return rows


def completion_as_chunk(body: bytes, url: str) -> dict[str, Any]:
    """A whole (non-streamed) chat completion as the one stream chunk it amounts to."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        return {
            "choices": [
                {
                    "delta": {"content": choice["message"].get("content") or ""},
                    "logprobs": choice.get("logprobs"),
                    "finish_reason": choice.get("finish_reason") or "stop",
                }
            ]
        }
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise CaptureError(f"malformed answer from {url}: not a chat completion") from None
