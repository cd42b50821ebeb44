"""A recorded answer as the client sees it: the generated tokens' texts, cut before a stop string and
the end-of-sequence token, released as soon as no stop string can still begin in them.

The session keeps every generated token (the end-of-sequence token and the tokens that carry a stop
string included); the client's text is the session's generated text (:attr:`~llmri.store.SessionReader.text`:
special tokens left out) up to where the stop string begins, token for token (docs/serve.md).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..frame import Token


@dataclass
class Piece:
    """Text released to the client and the tokens it came from (for ``logprobs``)."""

    text: str = ""
    tokens: list[Token] = field(default_factory=list)


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (it must wait)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Answer:
    """Feed it each generated :class:`~llmri.frame.Token` (:meth:`push`), then :meth:`finish`."""

    def __init__(self, stops: list[str], eos_ids: Collection[int], special_ids: Collection[int] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.eos_ids = set(eos_ids)
        self.special_ids = set(special_ids)
        self.full = ""  # every generated text so far (no EOS)
        self.released = 0  # characters of ``full`` given to the client
        self.pending: list[tuple[Token, int, int]] = []  # tokens not yet released, with their span in full
        self.done = False
        self.stopped_by = ""  # "stop_string" | "eos" once the answer ended on its own

    @property
    def text(self) -> str:
        return self.full[: self.released]

    def push(self, tok: Token) -> Piece:
        if self.done:
            return Piece()
        if tok.id in self.eos_ids:
            self.stopped_by = "eos"
            return self.finish()
        if tok.id in self.special_ids:  # not text (as SessionReader.text reads it)
            return Piece()
        start = len(self.full)
        self.full += tok.text
        self.pending.append((tok, start, len(self.full)))
        cut = -1
        for s in self.stops:
            i = self.full.find(s, self.released)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.done, self.stopped_by = True, "stop_string"
            return self._release(cut, straddling=True)
        return self._release(len(self.full) - _held(self.full[self.released :], self.stops), straddling=False)

    def finish(self) -> Piece:
        """The end of generation: whatever was held back is released (no stop string completed)."""
        if self.done and self.stopped_by == "stop_string":
            return Piece()
        self.done = True
        return self._release(len(self.full), straddling=True)

    def _release(self, upto: int, straddling: bool) -> Piece:
        out = Piece(self.full[self.released : upto])
        keep = []
        for tok, s, e in self.pending:
            if e <= upto or (straddling and s < upto):
                out.tokens.append(tok)
            else:
                keep.append((tok, s, e))
        self.pending = keep if not self.done else []
        self.released = max(self.released, upto)
        if self.done:
            self.full = self.full[:upto]
        return out


def logprob_entry(tok: Token, top: int) -> dict[str, Any]:
    """One token's ``logprobs.content`` entry (chat): its logprob and its ``top`` alternatives."""

    def lp(x: float) -> float:
        return float(x) if math.isfinite(x) else -9999.0  # OpenAI's value for "too unlikely to say"

    alts = [
        {"token": t, "logprob": lp(math.log(p)) if p > 0 else -9999.0, "bytes": list(t.encode())}
        for t, p in zip(tok.top_texts, tok.top_probs, strict=False)
    ][:top]
    return {"token": tok.text, "logprob": lp(tok.logprob), "bytes": list(tok.text.encode()), "top_logprobs": alts}
