"""The request bodies of ``POST /v1/chat/completions`` and ``POST /v1/completions`` (pydantic), and
their checks: :func:`parse_chat` and :func:`parse_completion` turn a body into a :class:`Request`
or raise an :class:`~.errors.APIError` naming the field (``param``).

Fields llmri cannot honour are refused when they ask for something (``n`` > 1, a penalty, a
``logit_bias``, ``echo``...), not silently dropped; fields it does not know are ignored and named in
the session's ``meta["serve"]["ignored"]``. docs/serve.md has the table.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..frame import TOP_K
from .errors import APIError, bad_request

#: The most stop strings a request may give (OpenAI's limit).
MAX_STOPS = 4


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    """What both endpoints take."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    #: an extension (vLLM's name): generate ``max_tokens`` tokens whatever the model says
    ignore_eos: bool | None = False


class ChatBody(_Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CompletionBody(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


@dataclass
class Request:
    """A checked request: what the worker generates from and what the session records."""

    kind: Literal["chat", "completion"]
    model: str
    #: chat messages (``{"role", "content"}``) or the completion's raw text
    prompt: list[dict[str, str]] | str
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    seed: int
    stream: bool
    include_usage: bool
    #: top alternatives per token (0: the chosen token's logprob only); ``None``: no logprobs
    logprobs: int | None
    user: str = ""
    ignore_eos: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)
    #: fields this server does not know and did not act on
    ignored: list[str] = field(default_factory=list)

    def sampling(self) -> dict[str, Any]:
        """The sampling settings as the session records them (``meta["serve"]["sampling"]``)."""
        return {
            "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "stop": self.stop, "seed": self.seed, "logprobs": self.logprobs, "ignore_eos": self.ignore_eos,
        }  # fmt: skip


def load_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise bad_request("the JSON body is nested too deeply") from None
    except ValueError:  # also UnicodeDecodeError and integers beyond Python's digit limit
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return data


def _validated(cls: type[_Common], data: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or None
        raise bad_request(f"{where or 'body'}: {err.get('msg', 'invalid value')}", param=where) from None


def _refuse_unsupported(b: _Common) -> None:
    """Fields that ask for something llmri does not do: 400 rather than an answer that ignores them."""
    if b.n not in (None, 1):
        raise bad_request("n must be 1: llmri serve generates one answer per request", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(b, name) not in (None, 0, 0.0):
            raise bad_request(f"{name} is not supported (only 0)", param=name)
    if b.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} strings", param="stop")
    return [s for s in stops if s]


def _top(n: int | None, param: str) -> int | None:
    if n is not None and n > TOP_K:
        raise bad_request(f"{param} is at most {TOP_K} here (llmri keeps each token's top {TOP_K})", param=param)
    return n


def _content(m: dict[str, Any], i: int) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text"}`` parts joined."""
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) for p in c):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in c):
            raise bad_request(f"messages.{i}.content: only text parts are supported", param=f"messages.{i}.content")
        return "".join(p["text"] for p in c)
    raise bad_request(f"messages.{i}.content must be text or a list of text parts", param=f"messages.{i}.content")


def _messages(raw: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(raw):
        role = m.get("role")
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system role
        if role not in ("system", "user", "assistant"):
            raise bad_request(
                f"messages.{i}.role: {str(role)[:40]!r} is not supported (system, developer, user, assistant)",
                param=f"messages.{i}.role",
            )
        if m.get("tool_calls"):
            raise bad_request(f"messages.{i}.tool_calls: tool calls are not supported", param=f"messages.{i}")
        out.append({"role": str(role), "content": _content(m, i)})
    return out


def _common(b: _Common, kind: Literal["chat", "completion"], prompt: Any, max_tokens: int | None,
            logprobs: int | None, ignored: list[str]) -> Request:  # fmt: skip
    return Request(
        kind=kind,
        model=b.model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=1.0 if b.temperature is None else float(b.temperature),
        top_p=1.0 if b.top_p is None else float(b.top_p),
        stop=_stops(b.stop),
        # no seed: a fresh one, as OpenAI's API samples anew each time ("regenerate" gives another
        # answer); the session records it, so any answer is reproduced by sending its seed
        seed=secrets.randbits(63) if b.seed is None else int(b.seed) % 2**63,
        stream=bool(b.stream),
        include_usage=bool(b.stream and b.stream_options and b.stream_options.include_usage),
        logprobs=logprobs,
        user=b.user or "",
        ignore_eos=bool(b.ignore_eos),
        ignored=sorted(ignored),
    )


def parse_chat(body: bytes) -> Request:
    """A ``/v1/chat/completions`` body, checked."""
    b: ChatBody = _validated(ChatBody, load_json(body))
    _refuse_unsupported(b)
    fmt = (b.response_format or {}).get("type", "text")
    if fmt != "text":
        raise bad_request(f"response_format {str(fmt)[:40]!r} is not supported (only 'text')", param="response_format")
    if b.tool_choice not in (None, "none", "auto"):
        raise bad_request("tool_choice: only 'auto' and 'none' are supported", param="tool_choice")
    top = _top(b.top_logprobs, "top_logprobs")
    if top and not b.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = b.max_completion_tokens if b.max_completion_tokens is not None else b.max_tokens
    ignored = list(b.model_extra or {}) + [k for k in ("metadata", "parallel_tool_calls") if getattr(b, k)]
    req = _common(b, "chat", _messages(b.messages), max_tokens, (top or 0) if b.logprobs else None, ignored)
    req.tools = list(b.tools or [])
    return req


def parse_completion(body: bytes) -> Request:
    """A ``/v1/completions`` body, checked."""
    b: CompletionBody = _validated(CompletionBody, load_json(body))
    _refuse_unsupported(b)
    if b.echo:
        raise bad_request("echo is not supported", param="echo")
    if b.best_of not in (None, 1):
        raise bad_request("best_of must be 1", param="best_of")
    if b.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    prompt = b.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad_request("prompt: one prompt per request (a list of one string at most)", param="prompt")
        prompt = prompt[0]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    return _common(b, "completion", prompt, b.max_tokens, _top(b.logprobs, "logprobs"), list(b.model_extra or {}))


def check_limits(req: Request, max_tokens_limit: int, default_max_tokens: int) -> APIError | None:
    """``max_tokens`` against the server's limit (``None``: the server's default, capped by the limit)."""
    if req.max_tokens is None:
        req.max_tokens = min(default_max_tokens, max_tokens_limit)
        return None
    if req.max_tokens > max_tokens_limit:
        return bad_request(
            f"max_tokens {req.max_tokens} is over this server's limit of {max_tokens_limit} "
            "(llmri serve --max-tokens-limit)",
            param="max_tokens",
        )
    return None
