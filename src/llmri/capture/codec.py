"""Prompt encoding and token decoding, around a transformers tokenizer."""

from __future__ import annotations

from typing import Any

from .._errors import CaptureError
from .messages import check_messages


class TextCodec:
    """Encodes prompts (raw text or chat messages through the chat template) and decodes ids."""

    def __init__(self, tokenizer: Any, generation_config: Any = None) -> None:
        self.tok = tokenizer
        eos: set[int] = set()
        for src in (getattr(tokenizer, "eos_token_id", None), getattr(generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        self.eos_ids = eos
        self.special_ids = set(int(x) for x in getattr(tokenizer, "all_special_ids", []) or [])
        self._pieces: dict[int, str] = {}

    def encode(self, prompt: Any, chat: bool | None) -> tuple[list[int], list[dict[str, str]] | None]:
        """Returns ``(ids, messages)``; ``messages`` is None for raw text."""
        if isinstance(prompt, (list, tuple)):
            messages = check_messages(prompt)
            if chat is False:
                raise CaptureError("a list of messages needs the chat template (chat=False was given)")
            return self.encode_chat(messages), messages
        if not isinstance(prompt, str):
            raise CaptureError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
        if chat:
            messages = [{"role": "user", "content": prompt}]
            return self.encode_chat(messages), messages
        ids = self.tok(prompt, add_special_tokens=True)["input_ids"]
        return [int(i) for i in ids], None

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tok, "chat_template", None):
            raise CaptureError("this tokenizer has no chat template: pass raw text (chat=False / --raw)")
        text = self.tok.apply_chat_template(
            messages, add_generation_prompt=messages[-1]["role"] != "assistant", tokenize=False
        )
        return [int(i) for i in self.tok(text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        out: str = self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return out

    def piece(self, token_id: int) -> str:
        """A single token's text on its own (for top-k alternatives; cached: asked 5 times per step)."""
        tid = int(token_id)
        text = self._pieces.get(tid)
        if text is None:
            text = self._pieces[tid] = self.decode([tid])
        return text
