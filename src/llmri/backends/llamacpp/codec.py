"""The GGUF's own tokenizer and chat template, behind the part of the transformers tokenizer API llmri uses."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..._errors import CaptureError


def compile_template(source: str) -> Any:
    """A chat template compiled the way transformers compiles one (``apply_chat_template``): a
    sandboxed Jinja environment with ``trim_blocks``, ``lstrip_blocks`` and loop controls, its
    ``tojson`` (no HTML escaping, non-ASCII kept), ``raise_exception`` and ``strftime_now``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise CaptureError(f"llama.cpp: the GGUF's chat template does not compile: {exc}") from None


class GGUFTokenizer:
    """llama.cpp's tokenizer for one model (``llama_tokenize`` / ``llama_token_to_piece``) and the
    chat template from the GGUF's metadata (``tokenizer.chat_template``), rendered as transformers
    renders it, so the same messages give the same text and ids as the Hugging Face tokenizer.

    Implements what :class:`~llmri.capture.codec.TextCodec` and calibration call: ``tok(text,
    add_special_tokens=...)["input_ids"]``, ``decode``, ``apply_chat_template(...,
    tokenize=False)``, ``chat_template``, ``eos_token_id`` (llama.cpp's end-of-generation set, a
    list: an instruct model's end-of-turn token is in it) and ``all_special_ids`` (the control tokens).
    """

    def __init__(self, vocab: Any, chat_template: str | None, unk_id: int | None = None) -> None:
        import llama_cpp as L

        self._L = L
        self._vocab = vocab
        self.vocab_size = int(L.llama_vocab_n_tokens(vocab))
        self.chat_template = chat_template or None
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)
        self._template: Any = None
        self.add_bos = bool(L.llama_vocab_get_add_bos(vocab))
        self.add_eos = bool(L.llama_vocab_get_add_eos(vocab))
        self.bos_token_id = self._id(L.llama_vocab_bos(vocab))
        eos = self._id(L.llama_vocab_eos(vocab))
        self.eos_token_id = sorted(
            {i for i in range(self.vocab_size) if L.llama_vocab_is_eog(vocab, i)}
            | ({eos} if eos is not None else set())
        )
        self.all_special_ids = [i for i in range(self.vocab_size) if L.llama_vocab_is_control(vocab, i)]
        self.special_tokens_map = {
            k: self.piece_text(i)
            for k, i in (
                ("bos_token", self.bos_token_id),
                ("eos_token", eos),
                ("unk_token", self._id(unk_id) if unk_id is not None else None),
                ("pad_token", self._id(L.llama_vocab_pad(vocab))),
            )
            if i is not None
        }

    def _id(self, token: int) -> int | None:
        return int(token) if 0 <= int(token) < self.vocab_size else None

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token text (``<|im_start|>``) becomes its token, as in transformers."""
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        for _ in range(2):
            out = (self._L.llama_token * n_max)()
            n = self._L.llama_tokenize(self._vocab, raw, len(raw), out, n_max, add_special_tokens, True)
            if n >= 0:
                return [int(x) for x in out[:n]]
            n_max = -n
        raise CaptureError(f"llama.cpp: cannot tokenize a text of {len(raw)} bytes")

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False, tokenize: bool = False
    ) -> Any:
        if not self.chat_template:
            raise CaptureError("this GGUF has no chat template (tokenizer.chat_template): pass raw text")
        if self._template is None:
            self._template = compile_template(self.chat_template)
        text = self._template.render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- decoding -----------------------------------------------------------------------------
    def _piece(self, token: int) -> bytes:
        b = self._pieces.get(token)
        if b is None:
            n = self._L.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
            if n < 0:
                self._buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, True)
            b = self._pieces[token] = self._buf.raw[:n]
        return b

    def piece_text(self, token: int) -> str:
        return self._piece(int(token)).decode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False, **_ignored: Any) -> str:
        """The text of ``ids``; bytes that are only part of a UTF-8 character decode to ``\\ufffd``."""
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return b"".join(self._piece(int(i)) for i in ids if int(i) not in special).decode("utf-8", errors="replace")
