"""``llmri chat``: chat-only mode from the terminal: stream an answer from an OpenAI-compatible
server (Ollama, LM Studio, llama.cpp, vLLM), then print each token's logprob and entropy."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .._errors import CaptureError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "chat",
        help="chat with an OpenAI-compatible server (no activations) and show token probabilities",
        description="Send PROMPT to the OpenAI-compatible server at --openai-url, print the answer as it "
        "streams, then a table of each answer token's logprob, probability, entropy and top alternatives. "
        "With -o the conversation is saved as a chat-only session.",
    )
    p.add_argument("prompt", nargs="?", help="the user message (or use --messages)")
    p.add_argument(
        "--openai-url",
        required=True,
        metavar="URL",
        help="API base URL, e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:1234/v1 (LM Studio)",
    )
    p.add_argument("--openai-model", default=None, metavar="NAME", help="model name (default: the server's only one)")
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    p.add_argument("-o", "--output", default=None, metavar="STORE", help="save the session to this store")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message before the prompt")
    p.add_argument("--messages", metavar="CHAT.json", help="a JSON list of {role, content} messages")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop when TEXT is generated")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for each next piece")
    p.add_argument("--no-table", action="store_true", help="print only the answer")
    return p


def _load_messages(args: argparse.Namespace) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if args.messages:
        from .capture import read_messages

        messages = list(read_messages(args.messages))
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
    if not any(isinstance(m, dict) and m.get("role") != "system" for m in messages):
        raise CaptureError("nothing to send: give a PROMPT or --messages")
    return messages


def _api_key(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise CaptureError(f"--api-key-env {var}: that environment variable is not set")
    return key


def _show(text: str, width: int) -> str:
    """Quoted, escaped and cut to ``width``, so leading spaces and newlines stay visible."""
    s = json.dumps(text, ensure_ascii=False)
    return s if len(s) <= width else s[: width - 2] + '~"'


def _num(x: float, fmt: str) -> str:
    return "-" if x != x else format(x, fmt)


def print_table(tokens: list[Any], out: Any = None) -> None:
    """Per-token summary of the answer: logprob, probability, entropy (lower bound), top alternatives."""
    out = out or sys.stdout
    print(f"{'#':>4}  {'token':<18} {'logprob':>8} {'prob':>6} {'entropy':>8}  top alternatives", file=out)
    for t in tokens:
        prob = math.exp(t.logprob) if t.logprob == t.logprob else math.nan
        alts = "  ".join(f"{_show(x, 14)} {p:.2f}" for x, p in zip(t.top_texts, t.top_probs, strict=False))
        print(
            f"{t.index:>4}  {_show(t.text, 18):<18} {_num(t.logprob, '.3f'):>8} {_num(prob, '.3f'):>6} "
            f"{_num(t.entropy, '.3f'):>8}  {alts}",
            file=out,
        )


def run(args: argparse.Namespace) -> int:
    from ..chatonly import chat_only_stream

    messages = _load_messages(args)
    st = chat_only_stream(
        args.openai_url,
        messages,
        model=args.openai_model,
        api_key=_api_key(args.api_key_env),
        timeout=args.timeout,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        store=args.output,
    )
    generated = []
    for frame in st:
        if frame.token.role == "generated":
            generated.append(frame.token)
            sys.stdout.write(frame.token.text)
            sys.stdout.flush()
    print()
    if not args.no_table and generated:
        print()
        print_table(generated)
        if not st.meta.get("logprobs"):
            print("(the server returned no logprobs: probabilities and entropy are unknown)")
        else:
            print("(entropy in nats, a lower bound estimated from the top logprobs)")
    if st.session_id:
        print(f"saved session {st.session_id} to {args.output} ({st.stop_reason})", file=sys.stderr)
    return 0
