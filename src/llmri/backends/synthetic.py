"""``synthetic``: a fast fake model and capture backend (no weights) for tests and demos.

The tokenizer is byte-level (one token per UTF-8 byte, id 256 = EOS). The "model" answers with
a canned reply, one byte per step, and its activations are smooth deterministic functions of the
token id, position and layer, so frames change from token to token like a real model's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..frame import SIGNALS
from .base import BACKENDS, Backend, Step

EOS = 256
REPLY = "The sky is blue because air scatters short wavelengths of sunlight more than long ones."


class ByteTokenizer:
    """A minimal tokenizer with the parts of the transformers API that llmri uses."""

    eos_token_id = EOS
    eos_token = "<eos>"
    pad_token_id = EOS
    all_special_ids = [EOS]
    chat_template = "synthetic"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False, **_: Any) -> str:
        data = bytes(i for i in ids if i < 256)
        eos = "" if skip_special_tokens else self.eos_token * sum(1 for i in ids if i == EOS)
        return data.decode("utf-8", errors="replace") + eos


class _Config:
    max_position_embeddings = 4096

    def __init__(self, n_layers: int, d_model: int) -> None:
        self.num_hidden_layers = n_layers
        self.hidden_size = d_model


class SyntheticModel:
    """Stands in for :class:`~llmri.models.LoadedModel`: ``llmri.capture(SyntheticModel(), ...)``."""

    llmri_backend = "synthetic"

    def __init__(self, n_layers: int = 6, d_model: int = 64, reply: str = REPLY) -> None:
        self.tokenizer = ByteTokenizer()
        self.config = _Config(n_layers, d_model)
        self.reply = list(reply.encode("utf-8")) + [EOS]
        self.name = f"synthetic-{n_layers}x{d_model}"
        self.fingerprint = hashlib.sha256(f"{self.name}|{reply}".encode()).hexdigest()[:16]
        self.model = None

    n_layers = property(lambda self: self.config.num_hidden_layers)
    d_model = property(lambda self: self.config.hidden_size)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": "",
            "fingerprint": self.fingerprint,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": "float32",
            "architecture": "Synthetic",
        }


@BACKENDS.register("synthetic")
class SyntheticBackend(Backend):
    name = "synthetic"
    provides = SIGNALS

    def __init__(self, model: Any, signals: Sequence[str] = SIGNALS) -> None:
        super().__init__(model, signals)
        self._model = model
        self._prompt_len = 0

    @property
    def layer_names(self) -> list[str]:
        return [f"layers.{i}" for i in range(self._model.n_layers)]

    @property
    def d_model(self) -> int:
        return int(self._model.d_model)

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step:
        import torch

        ids = [int(t) for t in input_ids.reshape(-1)]
        past: list[int] = list(cache or [])
        start = len(past)
        n, L, d = len(ids), self.n_layers, self.d_model
        pos = torch.arange(start, start + n, dtype=torch.float32)[:, None, None]
        tok = torch.tensor(ids, dtype=torch.float32)[:, None, None]
        layer = torch.arange(L, dtype=torch.float32)[None, :, None]
        dim = torch.arange(d, dtype=torch.float32)[None, None, :]
        base = torch.sin(0.07 * dim * (layer + 1) + 0.3 * pos + 0.05 * tok) * (1 + 0.2 * layer)
        acts = {
            "resid": base,
            "attn": torch.cos(0.11 * dim + 0.5 * pos * (layer + 1) / L) * torch.relu(base),
            "mlp": torch.tanh(base * (tok % 7 + 1) / 3) * (dim % (layer + 2) == 0),
        }
        acts = {s: acts[s] for s in self.signals}
        lg = None
        if logits:
            vocab = EOS + 1
            lg = torch.full((n, vocab), -4.0)
            lg += 0.5 * torch.sin(torch.arange(vocab, dtype=torch.float32)[None] * 0.37 + pos[:, 0])
            if n > 1 or start == 0:
                self._prompt_len = start + n  # a prefill chunk: the reply starts after it
            for j in range(n):
                k = start + j + 1  # the position the logits predict
                gen_idx = max(0, k - self._prompt_len)
                target = self._model.reply[min(gen_idx, len(self._model.reply) - 1)]
                lg[j, target] += 8.0
        return Step(logits=lg, acts=acts, cache=past + ids)
