"""``llmri serve [MODEL] -o STORE``: an OpenAI-compatible server that records every request as a
session, with the viewer at the same address (docs/serve.md)."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from .._errors import CaptureError
from . import saes
from .capture import add_lens_dtype
from .interventions import parse_steer
from .options import add_options

#: a variant's NAME (published as MODEL+NAME)
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..serve.app import DEFAULT_MAX_TOKENS, MAX_BATCH, MAX_BODY, MAX_QUEUE, MAX_TOKENS_LIMIT

    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server that records every request (viewer at the same address)",
        description="Serve MODEL with OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models): point any "
        "app or the openai SDK at http://HOST:PORT/v1; every request is recorded as a session in STORE, watchable "
        "live in the viewer at http://HOST:PORT/.",
    )
    p.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help="the bundled model (default), a model directory, a .gguf file (llama.cpp backend) or a Hugging Face id",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="STORE", help="the store sessions are recorded in")
    p.add_argument("--backend", default=None, metavar="NAME", help="capture backend (default hf; llama.cpp for .gguf)")
    p.add_argument("--name", default=None, metavar="NAME", help="the model name clients send (default: the model's)")
    p.add_argument("--lens", action="store_true", help="record the logit lens of every token (hf backend)")
    add_lens_dtype(p)
    p.add_argument("--attention", action="store_true", help="record attention per head (hf backend)")
    add_options(p, ["frame_dtype"])
    p.add_argument(
        "--variant", dest="variants", action="append", default=None, metavar="NAME=FILE@LAYERS[:SCALE]",
        help="also serve the model steered by a saved direction (FILE@LAYERS[:SCALE] as llmri capture --steer "
        "takes it) under the name MODEL+NAME (e.g. honest=honest.gguf@4:8); repeatable",
    )  # fmt: skip
    saes.add_flags(p.add_argument_group("SAE features of every session (docs/sae.md)"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key", default=None, metavar="KEY",
        help="required as 'Authorization: Bearer KEY' on every route (the viewer too: open /?token=KEY); "
        "needed for a non-loopback --host",
    )  # fmt: skip
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="read --api-key from this environment variable")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-tokens-limit", type=int, default=MAX_TOKENS_LIMIT, metavar="N",
                     help=f"largest max_tokens a request may ask (default {MAX_TOKENS_LIMIT})")  # fmt: skip
    lim.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                     help=f"max_tokens of a request that gives none (default {DEFAULT_MAX_TOKENS})")  # fmt: skip
    lim.add_argument("--max-body", type=int, default=MAX_BODY, metavar="BYTES",
                     help=f"largest request body (default {MAX_BODY})")  # fmt: skip
    lim.add_argument("--max-queue", type=int, default=MAX_QUEUE, metavar="N",
                     help=f"requests waiting for the model before 503 (default {MAX_QUEUE})")  # fmt: skip
    lim.add_argument("--max-batch", type=int, default=MAX_BATCH, metavar="N",
                     help=f"most waiting requests generated together, sharing each forward (hf backend; default "
                     f"{MAX_BATCH}; 1: one at a time)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="log errors only")
    return p


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key and args.api_key_env:
        raise CaptureError("give --api-key or --api-key-env, not both")
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise CaptureError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        return key
    if args.api_key is not None and len(args.api_key) < 8:
        raise CaptureError("--api-key must be at least 8 characters")
    return args.api_key


def check(args: argparse.Namespace) -> tuple[str | None, bool]:
    """Every check that needs no model (a load takes a while): the key, the bind, the limits."""
    from ..viewer.security import ViewerError, is_loopback

    key = _api_key(args)
    if not (0 <= args.port <= 65535):
        raise ViewerError(f"--port {args.port} is out of range (0-65535)")
    remote = not is_loopback(args.host)
    if remote and not key:
        raise ViewerError(f"--host {args.host} is not a loopback address: give --api-key KEY to expose the server")
    for name in ("max_tokens_limit", "default_max_tokens", "max_body", "max_queue", "max_batch"):
        if getattr(args, name) < 1:
            raise CaptureError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lens_dtype and not args.lens:
        raise CaptureError("--lens-dtype goes with --lens")
    backend = args.backend
    if backend is None and args.model and str(args.model).endswith(".gguf"):
        args.backend = backend = "llama.cpp"
    if backend:
        from ..backends import BACKENDS

        if backend not in BACKENDS:
            raise CaptureError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS.names())})")
    if (args.lens or args.attention) and backend == "llama.cpp":
        raise CaptureError("the llama.cpp backend has no lens or attention readouts: use --backend hf")
    return key, remote


def parse_variant(text: str) -> tuple[str, Any, str]:
    """``NAME=FILE@LAYERS[:SCALE]`` -> ``(NAME, the steer record, FILE@LAYERS[:SCALE])``; the direction
    is read now (as ``--steer`` reads it), so a bad one is one line before the model loads."""
    name, eq, spec = text.partition("=")
    if not eq or not spec:
        raise CaptureError(f"--variant takes NAME=FILE@LAYERS[:SCALE], got {text!r}")
    if not VARIANT_NAME.fullmatch(name):
        raise CaptureError(f"--variant: NAME must be 1-64 letters, digits or . _ @ : - (got {name!r})")
    return name, parse_steer(spec, "--variant"), spec


def parse_variants(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    """Every ``--variant``, checked (a name given twice is refused)."""
    out = [parse_variant(x) for x in getattr(args, "variants", None) or []]
    names = [name for name, _, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CaptureError(f"--variant: the name {twice[0]!r} is given twice")
    return out


def run(args: argparse.Namespace) -> int:
    from .._errors import StoreError, require

    require("fastapi", "viewer")
    require("uvicorn", "viewer")
    key, remote = check(args)
    variants = parse_variants(args)
    sae_options = saes.options(args)  # the SAE files before the model (one line for a bad one)
    from ..models import load_model
    from ..serve import ModelRegistry, ServedModel, create_serve_app, steered
    from ..serve import run as run_server
    from ..store import open_store
    from ..viewer.live import ModelEngine

    try:
        store = open_store(args.output, create=True)
    except StoreError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot open or create store {args.output}: {exc}") from None
    spec = args.model or "default"
    print(f"llmri serve: loading model {spec}{f' ({args.backend})' if args.backend else ''}...", flush=True)
    engine = ModelEngine(
        load_model(args.model, backend=args.backend), backend=args.backend, lens=args.lens,
        attention=args.attention, lens_dtype=args.lens_dtype, frame_dtype=args.frame_dtype, **sae_options,
    )  # fmt: skip
    registry = ModelRegistry()
    base = ServedModel(args.name or engine.name, engine)
    registry.add(base, aliases=("default",) if args.name != "default" else ())
    for name, record, spec in variants:
        try:
            registry.add(steered(base, name, [record], spec))
        except ValueError as exc:  # a variant's name is the base's own or an alias
            raise CaptureError(f"--variant {name}: {exc}") from None
    for m in registry.cards():
        print(f"llmri serve: serving {m['id']}", flush=True)
    gate = create_serve_app(
        registry, store, label=args.output, port=args.port or None, api_key=key, remote=remote,
        max_body=args.max_body, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens, max_queue=args.max_queue, max_batch=args.max_batch,
    )  # fmt: skip
    try:
        run_server(gate, args.host, args.port, quiet=args.quiet)
    except KeyboardInterrupt:
        pass
    return 0
