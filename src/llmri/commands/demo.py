"""``llmri demo``: the main job of the README. Capture an example conversation with the bundled
model into a demo store (once), print what happened, then open the viewer on it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

DEMO_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant who explains science simply."},
    {"role": "user", "content": "Why is the sky blue?"},
]
_BARS = " ▁▂▃▄▅▆▇█"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="capture an example chat with the bundled model and open the viewer", description=__doc__
    )
    p.add_argument("--store", default="llmri-demo.zarr", help="demo store (default ./llmri-demo.zarr)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--recapture", action="store_true", help="capture again even if the store has a session")
    p.add_argument("--no-view", action="store_true", help="capture and summarise only; do not start the viewer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--backend",
        default=None,
        metavar="NAME",
        help="capture backend: llama.cpp when llama-cpp-python is installed (fast), else hf; --backend hf "
        "keeps transformers",
    )
    return p


def demo_backend(requested: str | None) -> str:
    """``llama.cpp`` when llama-cpp-python is installed (``pip install 'llmri[llamacpp]'``), else ``hf``."""
    if requested:
        return requested
    import importlib.util

    return "llama.cpp" if importlib.util.find_spec("llama_cpp") is not None else "hf"


def sparkline(values: Any) -> str:
    lo, hi = float(min(values)), float(max(values))
    span = (hi - lo) or 1.0
    return "".join(_BARS[min(8, int(round(8 * (float(v) - lo) / span)))] for v in values)


def summarise(session: Any, timing: Timing | None = None, out: Any = sys.stdout) -> None:
    t = session.tokens
    n_gen = t.role.count("generated")
    model = session.meta.get("model", {})
    print(f"session   {session.id} ({session.status})", file=out)
    print(
        f"model     {model.get('name')}  {model.get('n_layers')} layers x {model.get('d_model')}  "
        f"backend={session.meta.get('backend')}",
        file=out,
    )
    print(f"tokens    {len(t) - n_gen} prompt + {n_gen} generated{timing.line() if timing else ''}", file=out)
    print(
        f"frames    {', '.join(session.signals)}: {len(session)} x {len(session.layers)} layers x "
        f"{session.tile[0]}x{session.tile[1]} ({session.meta['reducer']['kind']} reducer)",
        file=out,
    )
    print(f"answer    {session.text.strip()!r}", file=out)
    if n_gen and "resid" in session.signals:
        norms = session.norms("resid")
        gen = [i for i, r in enumerate(t.role) if r == "generated"]
        print("resid norm by layer (mean over the answer), layer 0 -> last:", file=out)
        print("          " + sparkline(norms[gen].mean(axis=0)), file=out)
        scored = [(t.logprob[i], i) for i in gen if not math.isnan(t.logprob[i])]
        if scored:
            lp, i = min(scored)
            alts = ", ".join(f"{x!r} {p:.2f}" for x, p in zip(t[i].top_texts, t[i].top_probs, strict=False))
            print(
                f"surprise  the least likely answer token was {t.text[i]!r} (p={math.exp(lp):.2f}; "
                f"the model considered: {alts})",
                file=out,
            )


@dataclass
class Timing:
    """When a capture started, was ready to generate, and made its first and last generated frame."""

    start: float
    ready: float = 0.0
    first: float | None = None
    last: float = 0.0
    generated: int = 0

    def frame(self, role: str) -> None:
        now = time.perf_counter()
        if role == "generated":
            self.first = now if self.first is None else self.first
            self.last, self.generated = now, self.generated + 1

    def rate(self) -> float | None:
        """Generated tokens per second, from the first generated frame to the last: what a user
        compares with other engines (no model load, calibration or prefill in it)."""
        if self.first is None or self.generated < 2 or self.last <= self.first:
            return None
        return (self.generated - 1) / (self.last - self.first)

    def line(self) -> str:
        rate = self.rate()
        setup = self.ready - self.start
        if rate is None:
            return f" (set-up {setup:.1f} s)"
        return f", {rate:.1f} tokens/s generating (set-up before the first token {setup:.1f} s, once)"


def capture_demo(store_path: str, max_new_tokens: int, recapture: bool, backend: str = "hf") -> Any:
    import llmri

    store = llmri.open_store(store_path, create=True)
    done = [s for s in store.sessions() if s.status == "complete" and s.meta.get("demo")]
    if done and not recapture:
        print(f"demo store {store_path} already holds session {done[-1].id}; reusing it (--recapture to redo)")
        return done[-1], None
    if backend == "llama.cpp":
        print("loading the bundled model (SmolLM2-135M-Instruct, its GGUF run by llama.cpp)...", flush=True)
    else:
        print("loading the bundled model (SmolLM2-135M-Instruct; the first run converts it once)...", flush=True)
    model = llmri.load_model(backend=backend)
    print("capturing an example conversation (resid, attn, mlp on every layer)...", flush=True)
    timing = Timing(time.perf_counter())
    stream = llmri.stream(
        model, DEMO_MESSAGES, max_new_tokens=max_new_tokens, store=store, meta={"demo": True}, backend=backend
    )
    timing.ready = time.perf_counter()  # the reducer's one-time calibration is done
    for frame in stream:
        timing.frame(frame.token.role)
    assert stream.session_id is not None  # a stream with a store has a session
    return store.session(stream.session_id), timing


def run(args: argparse.Namespace) -> int:
    backend = demo_backend(args.backend)
    session, timing = capture_demo(args.store, args.max_new_tokens, args.recapture, backend)
    summarise(session, timing)
    if args.no_view:
        return 0
    try:
        from . import view
    except ImportError:  # pragma: no cover - the viewer module ships with llmri
        return 0
    view_args = argparse.Namespace(
        paths=[args.store],
        host=args.host,
        port=args.port,
        no_browser=args.no_browser,
        allow_remote=False,
        model="default",
        backend=backend,
        openai_url=None,
        openai_model=None,
        api_key_env=None,
    )
    print(
        f"starting the viewer with live chat on the bundled model ({backend}; Ctrl-C to stop): type a message in "
        "the chat panel and watch every layer light up as the answer streams in...",
        flush=True,
    )
    return int(view.run(view_args) or 0)
