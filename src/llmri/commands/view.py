"""``llmri view PATH...``: browse the sessions of one or more stores in the browser."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._errors import CaptureError, StoreError
from ..settings import DEFAULTS
from .capture import add_lens_dtype
from .options import add_options
from .probes import add_flags as probe_flags
from .probes import options as probe_flag_options
from .saes import add_flags as sae_flags
from .saes import options as sae_flag_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "view",
        help="scrub stored sessions in the browser",
        description="Serve one or more stores on 127.0.0.1 and open the viewer: pick a session, scrub its frames, "
        "change colour maps, hover to read values, compare sessions.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a store (directory or fsspec URL); several may be given")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host; every request then needs the random token printed in the URL",
    )
    live = p.add_argument_group("live chat (sessions are recorded into the first PATH, created if missing)")
    live.add_argument(
        "--model",
        default=None,
        metavar="SPEC",
        help="chat with this model and watch its activations: 'default' (the bundled model), a model directory, "
        "a .gguf file or a Hugging Face id",
    )
    live.add_argument(
        "--backend",
        default=None,
        metavar="NAME",
        help="capture backend for --model (default hf; 'llama.cpp' runs a .gguf file itself, fast: "
        "pip install 'llmri[llamacpp]')",
    )
    live.add_argument(
        "--lens",
        action="store_true",
        help="record the logit lens of every token (hf backend): the page shows each layer's top tokens",
    )
    add_lens_dtype(live)
    add_options(live, ["frame_dtype"])
    live.add_argument(
        "--attention",
        action="store_true",
        help="record attention per head (hf backend): the page shows the layer x head grid",
    )
    sae_flags(live)
    probe_flags(live)
    live.add_argument(
        "--direction",
        dest="directions",
        action="append",
        default=None,
        metavar="FILE",
        help="a saved direction (.gguf control vector or .safetensors) the chat's steering panel offers by its "
        "file name; may be repeated",
    )
    live.add_argument(
        "--openai-url",
        default=None,
        metavar="URL",
        help="chat-only mode (no activations): an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 "
        "(Ollama) or http://127.0.0.1:1234/v1 (LM Studio); fixed for the whole run",
    )
    live.add_argument("--openai-model", default=None, metavar="NAME", help="model name (default: the only one served)")
    live.add_argument(
        "--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key (never shown)"
    )
    return p


def open_stores(paths: list[str]) -> dict[str, Any]:
    """``{label: FrameStore}`` for the given paths; a missing or unreadable store is one clear error."""
    from ..store import open_store

    out: dict[str, Any] = {}
    for path in paths:
        try:
            out[path] = open_store(path)
        except StoreError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
    return out


def live_plugin(args: argparse.Namespace) -> Any:
    """The live chat plug-in for ``create_app(live=...)`` (--model or --openai-url), or None."""
    model, url = args.model, args.openai_url
    backend = getattr(args, "backend", None)
    if backend and not model:
        raise CaptureError("--backend chooses how --model is recorded: give --model too")
    lens, attention = bool(getattr(args, "lens", False)), bool(getattr(args, "attention", False))
    if (lens or attention) and not model:
        raise CaptureError("--lens and --attention are readouts of a local model: give --model too")
    lens_dtype = getattr(args, "lens_dtype", None)
    if lens_dtype and not lens:
        raise CaptureError("--lens-dtype goes with --lens")
    frame_dtype = getattr(args, "frame_dtype", None)
    if frame_dtype and frame_dtype != DEFAULTS.frame_dtype and not model:
        raise CaptureError("--frame-dtype is how a local model's tiles are stored: give --model too")
    if getattr(args, "sae_paths", None) and not model:
        raise CaptureError("--sae reads a local model's vectors: give --model too")
    if getattr(args, "probe_files", None) and not model:
        raise CaptureError("--probe reads a local model's vectors: give --model too")
    directions = list(getattr(args, "directions", None) or [])
    if directions and not model:
        raise CaptureError("--direction steers a local model: give --model too")
    if not (model or url):
        return None
    if model and url:
        raise CaptureError("give --model (activations) or --openai-url (chat-only), not both")
    if backend:
        from ..backends import BACKENDS

        if backend not in BACKENDS:  # before a model load that can take minutes
            raise CaptureError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS.names())})")
    from ..store import open_store
    from ..viewer.live import ChatOnlyEngine, LiveChat, ModelEngine

    if args.paths:
        try:  # live sessions are recorded into the first store: create it if it does not exist yet
            open_store(args.paths[0], create=True)
        except StoreError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot open or create store {args.paths[0]}: {exc}") from None
    if url:
        from .. import ChatOnlyClient

        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise CaptureError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        client = ChatOnlyClient(url, model=args.openai_model, api_key=key)
        try:  # learn the model's name now, so the page can show it; a server that is down is asked again later
            client.resolve_model()
        except CaptureError as exc:
            print(f"llmri view: warning: {exc} (asking again at the first message)", flush=True)
        return LiveChat(ChatOnlyEngine(client))
    from ..models import load_model

    sae_options = sae_flag_options(args)  # the SAE files before the model (one line for a bad one)
    sae_options.update(probe_flag_options(args))
    print(f"llmri view: loading model {model} for live chat{f' ({backend})' if backend else ''}...", flush=True)
    if (lens or attention) and backend == "llama.cpp":  # before a model load that can take minutes
        raise CaptureError("the llama.cpp engine has no lens or attention readouts: use --backend hf")
    engine = ModelEngine(
        load_model(model, backend=backend),
        backend=backend,
        lens=lens,
        attention=attention,
        lens_dtype=lens_dtype,
        frame_dtype=frame_dtype,
        directions=directions,
        **sae_options,
    )
    return LiveChat(engine)


def build_app(args: argparse.Namespace, live: Any = None) -> Any:
    from ..viewer.app import create_app
    from ..viewer.security import ViewerError, is_loopback, new_token

    if not (0 <= args.port <= 65535):
        raise ViewerError(f"--port {args.port} is out of range (0-65535)")
    remote = not is_loopback(args.host)
    if remote and not args.allow_remote:
        raise ViewerError(f"--host {args.host} is not a loopback address: pass --allow-remote to expose the viewer")
    stores = open_stores(args.paths)
    return create_app(stores, port=args.port or None, token=new_token() if remote else None, remote=remote, live=live)


def run(args: argparse.Namespace) -> int:
    from .._errors import require

    require("fastapi", "viewer")
    require("uvicorn", "viewer")
    from ..viewer.serve import serve

    app = build_app(args, live=live_plugin(args))
    try:
        serve(app, args.host, args.port, open_browser=not args.no_browser)
    except KeyboardInterrupt:
        pass
    return 0
