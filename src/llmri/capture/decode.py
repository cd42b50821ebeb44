"""The decode loop every backend shares: KV-cached, greedy or sampled, with stop conditions.

Sampling happens on the CPU in float32 with a seeded ``torch.Generator``, so the same prompt,
settings and seed give the same tokens whichever backend (or device) ran the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import CaptureError
from ..backends.base import Backend
from ..settings import GenerationSettings

PREFILL_CHUNK = 256


class Detokenizer:
    """Incremental detokenization: each token gets the text it adds to the stream.

    Byte-level pieces that are only part of a UTF-8 character yield ``""`` until the token that
    completes the character, which carries it (the approach of vLLM's incremental detokenizer).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            out = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return out
        return ""


def sample(logits: Any, settings: GenerationSettings, generator: Any) -> int:
    """Choose the next token from ``logits`` ``[vocab]`` (float32, any device)."""
    import torch

    logits = logits.detach().float().cpu()
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        drop = (cum - sorted_p) > settings.top_p  # keep the smallest set whose mass reaches top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Positions:
    """Output of one forward: ``ids`` at positions ``start..start+len(ids)``, their activations,
    and the logits that *predicted* each of them (``pred_logits[i]`` is ``None`` for position 0);
    ``attn_weights``: the step's :attr:`~llmri.backends.base.Step.attn_weights` (``attention=True``);
    ``stacked``: its :attr:`~llmri.backends.base.Step.stacked` (every signal in one Tensor), if any."""

    start: int
    ids: list[int]
    role: str
    acts: dict[str, Any]
    pred_logits: Any  # Tensor [n, vocab] float32, rows aligned with ids; all-NaN row for position 0
    attn_weights: list[Any] | None = None
    stacked: Any = None


def decode_loop(
    capture: Backend,
    prompt_ids: list[int],
    settings: GenerationSettings,
    *,
    eos_ids: set[int],
    should_stop: Callable[[], bool] = lambda: False,
    max_positions: int | None = None,
    attention: bool = False,
) -> Iterator[Positions]:
    """Prefill the prompt (in chunks of ``PREFILL_CHUNK``), then generate one position per forward.

    ``should_stop()`` is asked before every forward (stop strings, a Stop button, a closed stream).
    Every generated token, EOS included, gets its own forward so its frame exists. ``attention``:
    every forward also returns its attention weights (a backend that ``supports_attention``).
    """
    import torch

    if not prompt_ids:
        raise CaptureError("the prompt is empty")
    if max_positions and len(prompt_ids) + settings.max_new_tokens > max_positions:
        raise CaptureError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({settings.max_new_tokens}) exceeds the "
            f"model's context of {max_positions} positions"
        )
    gen = torch.Generator().manual_seed(int(settings.seed))
    extra: dict[str, Any] = {"attention": True} if attention else {}
    cache = None
    prev_logits = None  # logits at the last position seen: predicts the next one
    n = len(prompt_ids)
    for s in range(0, n, PREFILL_CHUNK):
        chunk = prompt_ids[s : s + PREFILL_CHUNK]
        step = capture.step(torch.tensor([chunk], dtype=torch.long), cache, **extra)
        cache = step.cache
        logits = step.logits
        if prev_logits is None:
            pred = torch.cat([torch.full_like(logits[:1], float("nan")), logits[:-1]], dim=0)
        else:
            pred = torch.cat([prev_logits[None], logits[:-1]], dim=0)
        prev_logits = logits[-1]
        yield Positions(s, list(chunk), "prompt", step.acts, pred, step.attn_weights, step.stacked)
        if should_stop():
            return
    for i in range(settings.max_new_tokens):
        if should_stop():
            return
        assert prev_logits is not None
        tok = sample(prev_logits, settings, gen)
        last = i == settings.max_new_tokens - 1 or (tok in eos_ids and not settings.ignore_eos)
        # the last token's forward exists for its activations only: nothing reads its logits
        step = capture.step(torch.tensor([[tok]], dtype=torch.long), cache, logits=not last, **extra)
        cache = step.cache
        yield Positions(n + i, [tok], "generated", step.acts, prev_logits[None], step.attn_weights, step.stacked)
        if last:
            return
        prev_logits = step.logits[-1]
