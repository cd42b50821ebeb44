"""Viewer responsiveness: slider move -> drawn frame in headless Chromium, and frame-range fetch throughput.

A 1,000-token session with all three signals (30 layers of 16x16 tiles, the bundled model's shape) is
written to a Zarr store on disk; ``llmri view`` serves it from a subprocess, as a user would run it.

- cold: the client cache is cleared before every random jump (fetch + decode + draw);
- cached: every chunk is loaded first, then random jumps (decode-free draw only);
- fetch: frames/s of ``GET .../frames`` for one signal, in ranges of 32 and 256 (the client asks for 16
  frames of every signal at once).

Times run from the slider's ``input`` event to the frame drawn on the canvas (``draw_*``: the drawing
alone, i.e. colour mapping 3 x 30 tiles and blitting them).

Targets from the issue: p95 <= 16 ms once cached, <= 100 ms cold.

    python benchmarks/viewer.py [--tokens 1000] [--jumps 60]
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, table  # noqa: E402


def make_store(path: Path, n: int, layers: int = 30, tile: int = 16) -> str:
    """A session of ``n`` frames whose tiles drift smoothly (like a real model's), written to a Zarr store."""
    import llmri
    from llmri.frame import SIGNALS, Frame, Token

    rng = np.random.default_rng(0)
    store = llmri.open_store(path, create=True)
    meta = {
        "model": {"name": "bench-30x576", "fingerprint": "bench"},
        "backend": "synthetic",
        "reducer": {"kind": "random", "tile": [tile, tile], "seed": 0},
        "signals": list(SIGNALS),
        "layers": [f"model.layers.{i}" for i in range(layers)],
        "tile": [tile, tile],
        "scales": {s: [1.0] * layers for s in SIGNALS},
        "prompt": "benchmark",
    }
    w = store.create_session(meta)
    base = {s: rng.standard_normal((layers, tile, tile)).astype(np.float32) for s in SIGNALS}
    for i in range(n):
        tiles, norms, sps = {}, {}, {}
        for s in SIGNALS:
            base[s] = 0.9 * base[s] + 0.45 * rng.standard_normal((layers, tile, tile)).astype(np.float32)
            tiles[s] = (0.4 * base[s]).astype(np.float16)
            norms[s] = np.linalg.norm(base[s].reshape(layers, -1), axis=1).astype(np.float32)
            sps[s] = rng.random(layers).astype(np.float32)
        tok = Token(i, int(rng.integers(0, 50000)), f" t{i}", "prompt" if i < 20 else "generated",
                    -float(rng.random() * 3), float(rng.random() * 4), (1, 2, 3, 4, 5),
                    (0.5, 0.2, 0.1, 0.1, 0.1), ("a", "b", "c", "d", "e"))  # fmt: skip
        w.append(Frame(tok, tiles, norms, sps))
    w.close()
    return w.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def fetch_throughput(url: str, sid: str, n: int, span: int, seconds: float = 3.0) -> float:
    import httpx

    frames = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=url) as c:
        while time.perf_counter() - t0 < seconds:
            start = random.randrange(0, max(1, n - span))
            params = {"signal": "resid", "start": start, "stop": start + span}
            r = c.get(f"/api/sessions/s0/{sid}/frames", params=params)
            r.raise_for_status()
            frames += span
    return frames / (time.perf_counter() - t0)


JUMPS_JS = """async ([targets, cold]) => {
  const out = [];
  const s = document.getElementById('slider');
  for (const t of targets) {
    if (cold) window.llmri.clearCache();
    const t0 = performance.now();
    s.value = String(t);
    s.dispatchEvent(new Event('input'));
    await window.llmri.whenDrawn(t);
    out.push([performance.now() - t0, window.llmri.state.lastDrawMs]);
  }
  return out;
}"""

PRELOAD_JS = """async () => {
  const S = window.llmri.state;
  for (let t = 0; t < S.src.total; t += S.src.chunk) await S.src.ensureMany(S.cur.meta.signals, t);
}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--jumps", type=int, default=60)
    ap.add_argument("--screenshot", help="save a screenshot of the page (PNG path)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from llmri.testing import launch_chromium

    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        t0 = time.perf_counter()
        sid = make_store(path, args.tokens)
        print(f"wrote {args.tokens} frames in {time.perf_counter() - t0:.1f} s", flush=True)
        port = free_port()
        cmd = [sys.executable, "-m", "llmri", "view", str(path), "--port", str(port), "--no-browser"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            m = re.search(r"http://\S+", line)
            if not m:
                raise SystemExit(f"llmri view did not start: {line!r}")
            url = m.group(0)
            threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
            fetch = {span: fetch_throughput(url.rstrip("/"), sid, args.tokens, span) for span in (32, 256)}
            with sync_playwright() as p:
                browser = launch_chromium(p)
                ctx = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function("window.llmri && window.llmri.ready", timeout=60000)
                targets = [random.randrange(args.tokens) for _ in range(args.jumps)]
                page.evaluate(JUMPS_JS, [targets[:5], True])  # warm-up: JIT, fonts, first layout
                page.evaluate("performance.clearResourceTimings(); performance.setResourceTimingBufferSize(10000)")
                cold = page.evaluate(JUMPS_JS, [targets, True])
                fetch_ms = page.evaluate(
                    "performance.getEntriesByType('resource').filter(e => e.name.includes('/frames?'))"
                    ".map(e => e.responseEnd - e.startTime)"
                )
                page.evaluate(PRELOAD_JS)
                if args.screenshot:
                    page.evaluate("window.llmri.seek(600)")
                    page.wait_for_timeout(300)
                    page.screenshot(path=args.screenshot)
                cached = page.evaluate(JUMPS_JS, [targets, False])
                steps = list(range(1, min(args.tokens, 200)))
                scrub = page.evaluate(JUMPS_JS, [steps, False])
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)

    def row(case: str, runs: list[list[float]], target: float) -> dict:
        total, draw = [r[0] for r in runs], [r[1] for r in runs]
        return {"case": case, "n": len(runs), "p50_ms": statistics.median(total), "p95_ms": pct(total, 95),
                "target_p95_ms": target, "ok": pct(total, 95) <= target,
                "draw_p50_ms": statistics.median(draw), "draw_p95_ms": pct(draw, 95)}  # fmt: skip

    rows = [row("cold random jump", cold, 100), row("cached random jump", cached, 16),
            row("cached scrub (+1 steps)", scrub, 16)]  # fmt: skip
    print(table(rows, ["case", "n", "p50_ms", "p95_ms", "target_p95_ms", "ok", "draw_p50_ms", "draw_p95_ms"]))
    if fetch_ms:
        print(
            f"cold jumps: the frame request itself (browser fetch, server, transfer) p50 "
            f"{statistics.median(fetch_ms):.1f} ms, p95 {pct(fetch_ms, 95):.1f} ms over {len(fetch_ms)} requests"
        )
    frows = [{"range": span, "frames_per_s": fps, "MB_per_s": fps * 30 * 256 * 2 / 1e6}
             for span, fps in fetch.items()]  # fmt: skip
    print()
    print(table(frows, ["range", "frames_per_s", "MB_per_s"]))
    out = save("viewer", {"tokens": args.tokens, "layers": 30, "tile": [16, 16], "signals": 3,
                          "jumps": rows, "fetch_resid": frows, "cold_request_ms": fetch_ms})  # fmt: skip
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
