"""Live chat: tokens/s through the viewer's WebSocket against plain ``model.generate()``, and frame latency.

On the bundled model, greedy, the same chat prompt for both, EOS ignored so every run makes
``--new-tokens`` tokens:

* ``generate``: ``model.model.generate()`` on the chat-templated prompt (no capture at all), run on a
  worker thread as the live engine runs (see the comment in ``plain``); a streamer stamps each token.
* ``capture``: ``llmri.stream()`` of the same prompt into the same zarr store, no viewer (what
  streaming adds).
* ``live-ws``: a real viewer (uvicorn, zarr store on disk) with live chat; a WebSocket client sends the
  chat message and reads every frame (all three signals, random reducer) until ``done``.

With ``--backend llama.cpp`` the model is the bundled GGUF run by llama.cpp, and the baseline is
``llama.cpp-plain``: greedy decoding through llama-cpp-python's low-level API without the eval callback
(the same context settings), on a worker thread, stamping each token; capture and live-ws record with
the ``llama.cpp`` backend.

The three alternate for ``--rounds`` rounds after a warm-up. Per variant (medians):

* end to end: wall time from request to the end of the turn (the last token, ``done`` for live-ws,
  the store closed for capture), and ``n / time`` as tokens/s;
* first token: from request to the first generated token (generate: when the streamer gets it;
  capture and live: when its frame exists, which takes that token's own forward);
* streaming: ``(n - 1) / (last token - first token)``, the rate at which the answer appears.

Then the delay from a token's frame leaving the model (``t_model`` in its message) to its arrival: in
the Python client during the throughput runs, and in a real page (headless Chromium, the chat panel,
``--page-turns`` answers) both on arrival and once drawn and shown (p50/p95).

    python benchmarks/live.py [--rounds 5] [--new-tokens 64] [--threads 2] [--page-turns 2] [--no-page]
                              [--backend hf|llama.cpp] [--readouts [--lens-dtype bfloat16]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, median, save, table  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--page-turns", type=int, default=2)
    ap.add_argument("--no-page", action="store_true", help="skip the Chromium latency phase")
    ap.add_argument("--backend", default="hf", choices=["hf", "llama.cpp"])
    ap.add_argument("--readouts", action="store_true", help="capture and live chat with lens=True and attention=True")
    ap.add_argument("--lens-dtype", default=None, choices=["bfloat16", "float16"], help="with --readouts: lens_dtype")
    args = ap.parse_args()

    import torch
    from transformers.generation.streamers import BaseStreamer
    from websockets.sync.client import connect

    import llmri
    from llmri.testing import CHROMIUM, ServedApp
    from llmri.viewer import create_app
    from llmri.viewer.live import LiveChat, ModelEngine

    torch.set_num_threads(args.threads)
    llama = args.backend == "llama.cpp"
    if llama:
        from _llamacpp import PlainDecoder
        from llmri.backends.llamacpp import load_gguf

        model = load_gguf(n_threads=args.threads)
        decoder = PlainDecoder(model)
    else:
        model = llmri.load_model()
    base_name = "llama.cpp-plain" if llama else "generate"
    n = args.new_tokens
    ids = model.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    inp = torch.tensor([list(ids)])

    tmp = tempfile.TemporaryDirectory(prefix="llmri-bench-live-")
    store = llmri.open_store(Path(tmp.name) / "live.zarr", create=True)
    readouts: dict = {"lens": True, "attention": True} if args.readouts else {}
    if args.readouts and args.lens_dtype:
        readouts["lens_dtype"] = args.lens_dtype
    live = LiveChat(ModelEngine(model, backend=args.backend, **readouts))
    served = ServedApp(create_app(store, live=live))
    url = f"http://127.0.0.1:{served.port}"
    ws_latency: list[float] = []
    request = {
        "type": "chat",
        "messages": PROMPT,
        "settings": {"max_new_tokens": n, "ignore_eos": True, "signals": ["resid", "attn", "mlp"], "reducer": "random"},
    }

    # per variant and run: (request time, [time each generated token appeared], end time)
    stamps: dict[str, list[tuple[float, list[float], float]]] = {base_name: [], "capture": [], "live-ws": []}

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value) -> None:  # noqa: ANN001 - the prompt first, then each new token
            if self.prompt_seen:
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def plain_llama() -> None:
        times: list[float] = []
        t0 = time.perf_counter()
        th = threading.Thread(
            target=decoder.generate, args=(list(ids), n, lambda _tok: times.append(time.perf_counter()))
        )
        th.start()
        th.join()
        stamps[base_name].append((t0, times, time.perf_counter()))
        assert len(times) == n

    def plain() -> None:
        # On a worker thread, like the live engine: on this oversubscribed 2-core machine torch ran about 5x
        # slower on the main thread than on a worker thread, which would flatter live chat unfairly.
        out = []
        streamer = Stamps()
        t0 = time.perf_counter()

        def work() -> None:
            with torch.inference_mode():
                out.append(
                    model.model.generate(inp, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
                )

        th = threading.Thread(target=work)
        th.start()
        th.join()
        stamps[base_name].append((t0, streamer.times, time.perf_counter()))
        assert out[0].shape[1] == inp.shape[1] + n and len(streamer.times) == n

    def capture_only() -> None:
        # the same capture (all signals, random reducer, zarr store) without the viewer: what streaming adds
        times: list[float] = []
        kw = {"max_new_tokens": n, "ignore_eos": True, "reducer": "random", "store": store, "backend": args.backend}
        kw.update(readouts)
        t0 = time.perf_counter()

        def work() -> None:
            for frame in llmri.stream(model, PROMPT, **kw):
                if frame.token.role == "generated":
                    times.append(time.perf_counter())

        th = threading.Thread(target=work)
        th.start()
        th.join()
        stamps["capture"].append((t0, times, time.perf_counter()))
        assert len(times) == n

    def live_ws() -> None:
        from llmri.viewer.encoding import decode_array

        times: list[float] = []
        with connect(url.replace("http", "ws") + "/api/live", origin=url, max_size=None, compression=None) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
            t0 = time.perf_counter()
            ws.send(json.dumps(request))
            gen = 0
            while True:
                msg = ws.recv(timeout=120)
                if isinstance(msg, bytes):
                    h, _ = decode_array(msg)
                    if h["tokens"][0]["role"] == "generated":
                        gen += 1
                        times.append(time.perf_counter())
                        ws_latency.append(time.time() - h["t_model"])
                    continue
                data = json.loads(msg)
                if data["type"] == "done":
                    assert data["status"] == "complete", data
                    break
                if data["type"] in ("error", "busy"):
                    raise RuntimeError(data["message"])
            stamps["live-ws"].append((t0, times, time.perf_counter()))
        assert gen == n, gen

    times = alternate(
        {base_name: plain_llama if llama else plain, "capture": capture_only, "live-ws": live_ws}, args.rounds
    )
    runs = {name: st[-args.rounds :] for name, st in stamps.items()}  # the warm-up left out
    first = {name: median([ts[0] - t0 for t0, ts, _ in st]) for name, st in runs.items()}
    stream = {name: median([(n - 1) / (ts[-1] - ts[0]) for _, ts, _ in st]) for name, st in runs.items()}
    base = median(times[base_name])
    rows = []
    for name, ts in times.items():
        m = median(ts)
        rows.append(
            {
                "variant": name,
                "median_s": m,
                "tokens_per_s": n / m,
                "vs_baseline": base / m,
                "first_token_ms": first[name] * 1000,
                "stream_tokens_per_s": stream[name],
                "stream_vs_baseline": stream[name] / stream[base_name],
                "runs": len(ts),
            }
        )
    load = os.getloadavg()
    print(
        f"live chat throughput ({args.backend}; baseline {base_name}): {len(ids)}-token chat prompt, {n} new "
        "tokens (EOS ignored), greedy, "
        f"{args.threads} threads, {args.rounds} alternating rounds after a warm-up (medians); "
        f"load average {load[0]:.1f}/{load[1]:.1f}"
    )
    print("end to end (request -> end of turn), first token, and streaming ((n - 1) / (last - first token)):")
    cols = ["variant", "median_s", "tokens_per_s", "vs_baseline", "first_token_ms", "stream_tokens_per_s"]
    print(table(rows, [*cols, "stream_vs_baseline", "runs"]))
    ws_ms = [x * 1000 for x in ws_latency]
    lat_rows = [
        {"where": "python ws client (arrival)", "n": len(ws_ms), "p50_ms": pct(ws_ms, 0.5), "p95_ms": pct(ws_ms, 0.95)}
    ]

    page: dict[str, list[float]] = {}
    if not args.no_page and os.path.exists(CHROMIUM):
        page = page_latency(url, args.page_turns, n)
        for key, label in (("arrive", "page (arrival)"), ("shown", "page (frame drawn, text shown)")):
            xs = page.get(key, [])
            lat_rows.append({"where": label, "n": len(xs), "p50_ms": pct(xs, 0.5), "p95_ms": pct(xs, 0.95)})
    print("frame latency: a generated token's frame leaving the model -> arriving / on screen")
    print(table(lat_rows, ["where", "n", "p50_ms", "p95_ms"]))
    served.close()
    live.close()
    path = save(
        "live"
        + ("_llamacpp" if llama else "")
        + ("_readouts" if args.readouts else "")
        + (f"_{args.lens_dtype}" if args.readouts and args.lens_dtype else ""),
        {
            "args": vars(args),
            "load_average": load,
            "prompt_tokens": len(ids),
            "rows": rows,
            "times": times,
            "token_times": {
                name: [[t - t0 for t in ts] + [end - t0] for t0, ts, end in st] for name, st in runs.items()
            },
            "latency": lat_rows,
            "page_latency_ms": page,
            "ws_latency_ms": ws_ms,
            "mean_tokens_per_s_live": statistics.fmean(n / t for t in times["live-ws"]),
        },
    )
    print("saved", path)
    tmp.cleanup()


def page_latency(url: str, turns: int, n: int) -> dict[str, list[float]]:
    """Chat ``turns`` times in a real page; per generated token: arrival and on-screen delay (ms)."""
    from playwright.sync_api import sync_playwright

    from llmri.testing import launch_chromium

    with sync_playwright() as p:
        b = launch_chromium(p)
        pg = b.new_page(viewport={"width": 1440, "height": 900})
        pg.goto(url)
        deadline = time.monotonic() + 60
        while not pg.evaluate(
            "() => !!(window.llmri && window.llmri.ready && window.llmri.live && window.llmri.live.hello)"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not get ready")
            time.sleep(0.05)
        pg.click("#chat-gear")
        pg.fill("#cs-max", str(n))
        pg.click("#chat-gear")
        for i in range(turns):
            pg.evaluate("() => { window.llmri.live.arrivals = []; }") if i == 0 else None
            pg.fill(
                "#chat-input", "Tell me a short story about a lighthouse keeper and a storm." if i == 0 else "Go on."
            )
            pg.press("#chat-input", "Enter")
            time.sleep(0.5)
            deadline = time.monotonic() + 300
            while pg.evaluate("() => !!window.llmri.live.run || !!window.llmri.live.pendingSend"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the page's turn did not end")
                time.sleep(0.1)
        recs = pg.evaluate("() => window.llmri.live.arrivals.filter(r => r.stop - r.start === 1)")
        b.close()
    return {
        "arrive": [r["t_arrive"] - r["t_model"] for r in recs],
        "shown": [r["t_shown"] - r["t_model"] for r in recs if r["t_shown"]],
    }


if __name__ == "__main__":
    main()
