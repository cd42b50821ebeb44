"""``llmri capture``: record one prompt (or a whole conversation) into a store; prints the session id."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from .._errors import CaptureError, StoreError
from ..capture.precision import FrameOverflowWarning
from ..settings import CAPTURE_LENS_BATCH
from . import interventions, saes
from .inspect import parse_hook_points
from .options import add_attention, add_options, attention_options, collect, described, read_json

#: The options ``llmri capture`` passes as they are (the readouts and --chat/--raw have flags of their own).
GENERAL = (
    "backend",
    "signals",
    "hook_points",
    "reducer",
    "tile",
    "reducer_seed",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "ignore_eos",
    "frame_dtype",
    "layers",
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "capture",
        help="capture a prompt's activations into a store",
        description="Generate from PROMPT (or --messages) and record every token's frame into the store -o. "
        "Prints the new session's id.",
    )
    p.add_argument("prompt", nargs="?", help="the prompt text (or use --messages, or --prompts for a study)")
    p.add_argument("-o", "--output", required=True, metavar="STORE", help="store path or URL (created if missing)")
    p.add_argument("--model", default=None, metavar="SPEC", help="model dir, .gguf file or hub id (default: bundled)")
    add_options(p, ["backend", "signals"])
    p.add_argument(
        "--hook-points",
        type=parse_hook_points,
        default=None,
        metavar="SIG=PATH,...",
        help="name the module per signal, {i} for the layer: resid=model.layers.{i},mlp=model.layers.{i}.mlp "
        "(see `llmri inspect`)",
    )
    add_options(
        p, ["reducer", "tile", "reducer_seed", "max_new_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos"]
    )
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=True, help="prompt is a user message")
    chat.add_argument("--raw", dest="chat", action="store_false", help="feed the prompt as raw text")
    p.add_argument("--messages", metavar="CHAT.json", help="a JSON list of {role, content} messages")
    add_options(p, ["lens", "lens_dtype"])
    p.add_argument(
        "--lens-batch",
        type=int,
        default=CAPTURE_LENS_BATCH,
        metavar="N",
        help=described("lens_batch", CAPTURE_LENS_BATCH),
    )
    add_attention(p)
    add_options(p, ["frame_dtype"])
    add_options(p, ["layers"], layers=str)
    study = p.add_argument_group("a study: many prompts, one session each (docs/studies.md)")
    study.add_argument(
        "--prompts",
        metavar="FILE",
        help="JSONL ({prompt} or {messages}, optional id), CSV (a prompt column) or a datasets directory",
    )
    study.add_argument("--batch-size", type=int, default=16, metavar="N", help="prompts per forward (default 16)")
    interventions.add_flags(p.add_argument_group("interventions (docs/interventions.md, Backends: which apply what)"))
    saes.add_flags(p.add_argument_group("SAE features (docs/sae.md)"))
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def add_lens_dtype(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--lens-dtype``, for ``llmri capture`` and ``llmri view``'s live chat."""
    add_options(p, ["lens_dtype"])


def read_messages(path: str) -> list[dict[str, Any]]:
    """A conversation from a JSON file: a list of {role, content}, or {"messages": [...]}."""
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise CaptureError(f"{path}: expected a non-empty JSON list of {{role, content}} messages")
    return data


def _check_store(output: str) -> Any:
    """An existing store is opened (and checked) now; a new one is created by the capture itself,
    once the model and reducer are ready, so a capture that cannot start leaves nothing behind."""
    import os

    import llmri

    if "://" in output and not output.startswith("file://"):
        return llmri.open_store(output, create=True)
    local = output[len("file://") :] if output.startswith("file://") else output
    if os.path.exists(local):
        return llmri.open_store(output)
    parent = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise StoreError(f"{output}: no such directory {parent}")
    return output


class _Progress:
    """One self-overwriting line on a terminal (stderr); nothing when stderr is not a TTY."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.t0 = time.monotonic()
        self.first_gen: float | None = None
        self.generated = 0
        self.frames = 0
        self._last = 0.0

    def update(self, role: str) -> None:
        self.frames += 1
        if role == "generated":
            if self.first_gen is None:
                self.first_gen = time.monotonic()
            self.generated += 1
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def rate(self, now: float) -> float:
        if self.first_gen is None or self.generated < 2:
            return 0.0
        return (self.generated - 1) / max(now - self.first_gen, 1e-9)

    def _draw(self, now: float) -> None:
        width = 24
        done = int(width * self.generated / self.total) if self.total else width
        bar = "#" * done + "-" * (width - done)
        sys.stderr.write(
            f"\r[{bar}] {self.generated}/{self.total} tokens  {self.rate(now):5.1f} tok/s  ({self.frames} frames)"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _readout_options(args: argparse.Namespace) -> dict[str, Any]:
    """``lens`` / ``lens_dtype`` / ``lens_batch`` / ``attention`` / ``attention_k`` from the flags."""
    out: dict[str, Any] = {}
    if getattr(args, "lens", False):
        out.update(collect(args, ["lens", "lens_batch", "lens_dtype"]))
    elif getattr(args, "lens_dtype", None):
        raise CaptureError("--lens-dtype goes with --lens")
    out.update(attention_options(getattr(args, "attention", None)))
    return out


def run(args: argparse.Namespace) -> int:
    import llmri

    if args.prompts is not None:
        return _run_study(args)
    if args.messages and args.prompt:
        raise CaptureError("give either PROMPT or --messages, not both")
    if not args.messages and args.prompt is None:
        raise CaptureError("no prompt: give PROMPT or --messages CHAT.json")
    prompt: Any = read_messages(args.messages) if args.messages else args.prompt
    model: Any = args.model
    if args.backend == "synthetic":
        if model is not None:
            raise CaptureError("the synthetic backend brings its own fake model: drop --model")
        from ..backends.synthetic import SyntheticModel

        model = SyntheticModel()
    store = _check_store(args.output)
    try:
        # checks its arguments before the model loads and before the store gets the session
        st = llmri.stream(
            model,
            prompt,
            store=store,
            chat=True if args.messages else args.chat,
            **collect(args, GENERAL),
            **_readout_options(args),
            **interventions.options(args),
            **saes.options(args),
        )
    except (ValueError, TypeError) as exc:
        raise CaptureError(str(exc)) from None
    progress = _Progress(sys.stderr.isatty() and not args.quiet, args.max_new_tokens)
    with warnings.catch_warnings(record=True) as caught:  # an overflow: one line of ours, not a Python warning
        warnings.simplefilter("always", FrameOverflowWarning)
        try:
            for frame in st:
                progress.update(frame.token.role)
        except KeyboardInterrupt:
            progress.finish()
            print(f"llmri capture: interrupted; partial session {st.session_id} kept", file=sys.stderr)
            raise
    progress.finish()
    for w in caught:
        if issubclass(w.category, FrameOverflowWarning):
            print(f"llmri capture: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(st.session_id)
    return 0


def _run_study(args: argparse.Namespace) -> int:
    """``--prompts FILE``: every prompt of the file into the store, resumed where it stopped."""
    import llmri

    if args.prompt is not None or args.messages:
        raise CaptureError("--prompts takes its prompts from the file: drop PROMPT / --messages")
    from ..study import check_prompts

    check_prompts(args.prompts)  # one line naming the file and line, before the model loads
    store = _check_store(args.output)
    try:
        report = llmri.capture_many(
            args.model,
            args.prompts,
            store=store,
            batch_size=args.batch_size,
            progress=sys.stderr.isatty() and not args.quiet,
            chat=args.chat,
            **collect(args, GENERAL),
            **_readout_options(args),
            **interventions.options(args),
        )
    except (ValueError, TypeError) as exc:
        raise CaptureError(str(exc)) from None
    except KeyboardInterrupt:
        print(
            "llmri capture: interrupted; the complete sessions are kept: run the same command to finish",
            file=sys.stderr,
        )
        raise
    done = f"{report.captured} captured, {report.skipped} already complete"
    print(f"{done}, {report.tokens} tokens into {args.output}")
    return 0
