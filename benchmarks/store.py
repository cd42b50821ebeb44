"""Store benchmark: can the Zarr store keep up with generation, how fast does it read, what does it cost on disk?

Measures, in one run on this machine:

- the generation rate (generated tokens/s of a capture with no store) of the model;
- append throughput (frames/s) of ZarrFrameStore for that model's frame shape (all signals),
  with zstd-compressed and raw frame chunks, background and synchronous commits, against the
  target of 50x the generation rate; and how long ``append`` blocks the capture loop (p50/p95);
- random-access read latency of one frame and of a 64-frame range (p50, p95), fresh reader;
- bytes on disk per frame, with and without compression;
- the cost of one whole-file write that follows no link (``nofollow.write_file``, what every
  commit does per file) against zarr's own ``LocalStore`` write, alternating, per file size.

Variants alternate and repeat; medians are reported. Usage::

    python benchmarks/store.py                 # the bundled SmolLM2-135M (30 layers, 16x16 tiles)
    python benchmarks/store.py --model synthetic --frames 256 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import llmri
from llmri.frame import Frame, Token
from llmri.store.zarr import ZarrFrameStore

RESULTS = Path(__file__).parent / "results" / "store.json"
TARGET_RATIO = 50.0


def generation_rate(model, tokens: int) -> tuple[float, dict, list[Frame]]:
    """Generated tokens per second of a plain capture (no store), after one warm-up; also returns
    the capture's meta and frames, reused below as realistic data."""
    llmri.capture(model, "Warm up.", max_new_tokens=4, ignore_eos=True)
    st = llmri.stream(
        model, "Explain why the sky is blue, in detail.", chat=True, max_new_tokens=tokens, ignore_eos=True
    )
    first = None
    n = 0
    frames = []
    for f in st:
        frames.append(f)
        if f.token.role == "generated":
            n += 1
            if first is None:
                first = time.perf_counter()  # time from the first generated token: prefill excluded
    dt = time.perf_counter() - first if first else float("nan")
    return (n - 1) / dt if n > 1 else float("nan"), st.meta, frames


def make_frames(sample: list[Frame], n: int) -> list[Frame]:
    """``n`` frames with real tile values (cycled from a capture) and fresh indices."""
    out = []
    for i in range(n):
        f = sample[i % len(sample)]
        t = f.token
        tok = Token(i, t.id, t.text, t.role, t.logprob, t.entropy, t.top_ids, t.top_probs, t.top_texts)
        out.append(Frame(tok, f.tiles, f.norms, f.sparsity))
    return out


def append_run(root: Path, meta: dict, frames: list[Frame], compress: bool, background: bool) -> dict:
    path = root / f"w-{compress}-{background}-{random.getrandbits(32):08x}.zarr"
    store = ZarrFrameStore(str(path), create=True, compress=compress, background=background)
    blocked = []
    t0 = time.perf_counter()
    w = store.create_session(meta)
    for f in frames:
        a = time.perf_counter()
        w.append(f)
        blocked.append(time.perf_counter() - a)
    w.close()
    dt = time.perf_counter() - t0
    session_dir = path / "sessions" / w.id
    frame_bytes = sum(p.stat().st_size for p in (session_dir / "frames").rglob("*") if p.is_file())
    total_bytes = sum(p.stat().st_size for p in session_dir.rglob("*") if p.is_file())
    return {
        "path": str(path),
        "id": w.id,
        "fps": len(frames) / dt,
        "append_p50_ms": 1e3 * float(np.percentile(blocked, 50)),
        "append_p95_ms": 1e3 * float(np.percentile(blocked, 95)),
        "frame_bytes_per_frame": frame_bytes / len(frames),
        "session_bytes_per_frame": total_bytes / len(frames),
    }


def read_latency(path: str, sid: str, signal: str, reads: int) -> dict:
    store = ZarrFrameStore(path)
    s = store.session(sid)
    n = len(s)
    rng = random.Random(0)
    one, rng64 = [], []
    for _ in range(reads):
        i = rng.randrange(n)
        a = time.perf_counter()
        s.frames(signal, i, i + 1)
        one.append(time.perf_counter() - a)
        j = rng.randrange(max(1, n - 64))
        a = time.perf_counter()
        s.frames(signal, j, j + 64)
        rng64.append(time.perf_counter() - a)
    a = time.perf_counter()
    ZarrFrameStore(path).session(sid).frames(signal, n // 2, n // 2 + 1)
    cold = time.perf_counter() - a
    return {
        "one_p50_ms": 1e3 * float(np.percentile(one, 50)),
        "one_p95_ms": 1e3 * float(np.percentile(one, 95)),
        "range64_p50_ms": 1e3 * float(np.percentile(rng64, 50)),
        "range64_p95_ms": 1e3 * float(np.percentile(rng64, 95)),
        "open_and_read_one_ms": 1e3 * cold,
    }


def file_writes(root: Path, sizes: list[int], files: int, repeats: int) -> list[dict]:
    """Microseconds per whole-file write: llmri's no-follow write vs zarr LocalStore's ``_put``,
    rewriting the same few keys as commits do (median of ``repeats`` alternating runs)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage._local import _put

    from llmri.store.zarr.nofollow import write_file

    rows = []
    for size in sizes:
        data = os.urandom(size)
        buf = default_buffer_prototype().buffer.from_bytes(data)
        made: set[str] = set()
        ways = ("zarr LocalStore", "llmri no-follow")
        us: dict[str, list[float]] = {k: [] for k in ways}
        for r in range(repeats):
            for name in ways if r % 2 == 0 else ways[::-1]:
                t = time.perf_counter()
                for i in range(files):
                    key = f"w{size}-{r}-{name[0]}/frames/resid/c/{i % 4}/0/0/0"
                    if name == "llmri no-follow":
                        write_file(str(root), key, data, made)
                    else:
                        _put(root / key, buf)
                us[name].append(1e6 * (time.perf_counter() - t) / files)
        base = statistics.median(us["zarr LocalStore"])
        rows += [
            {"bytes": size, "way": k, "us_per_file": statistics.median(v), "x_zarr": statistics.median(v) / base}
            for k, v in us.items()
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec, or 'synthetic' (default: the bundled model)")
    ap.add_argument("--gen-tokens", type=int, default=48, help="tokens generated to measure the generation rate")
    ap.add_argument("--frames", type=int, default=1024, help="frames appended per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--file-writes", type=int, default=300, help="files written per run of the file-write comparison")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    if args.model == "synthetic":
        from llmri.backends.synthetic import SyntheticModel

        model = SyntheticModel()
    else:
        model = llmri.load_model(args.model)
    print(f"measuring the generation rate ({args.gen_tokens} tokens)...", file=sys.stderr)
    gen_rate, gen_meta, sample = generation_rate(model, args.gen_tokens)
    meta = {k: gen_meta[k] for k in ("signals", "layers", "tile", "scales", "model", "reducer", "top_k")}
    frames = make_frames(sample, args.frames)
    n_layers, (h, w) = len(meta["layers"]), meta["tile"]
    raw_bytes = len(meta["signals"]) * n_layers * h * w * 2

    variants = [(True, True), (False, True), (True, False), (False, False)]  # (compress, background)
    runs: dict[tuple[bool, bool], list[dict]] = {v: [] for v in variants}
    root = Path(tempfile.mkdtemp(prefix="llmri-bench-store-"))
    try:
        append_run(root, meta, frames[:64], True, True)  # warm-up
        for _ in range(args.repeats):
            for v in variants:
                runs[v].append(append_run(root, meta, frames, *v))
        writes = file_writes(root, [2_048, raw_bytes * 16], args.file_writes, 2 * args.repeats + 1)
        reads = {}
        for compress in (True, False):
            last = runs[(compress, True)][-1]
            reads[compress] = read_latency(last["path"], last["id"], meta["signals"][0], args.reads)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(v: tuple[bool, bool], key: str) -> float:
        return statistics.median(r[key] for r in runs[v])

    rows = []
    for v in variants:
        fps = med(v, "fps")
        rows.append(
            {
                "compress": "zstd" if v[0] else "raw",
                "commits": "background" if v[1] else "synchronous",
                "append_fps": fps,
                "x_generation": fps / gen_rate,
                "append_blocks_p50_ms": med(v, "append_p50_ms"),
                "append_blocks_p95_ms": med(v, "append_p95_ms"),
                "frame_bytes_per_frame": med(v, "frame_bytes_per_frame"),
                "session_bytes_per_frame": med(v, "session_bytes_per_frame"),
            }
        )
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": meta["model"].get("name"),
        "frame_shape": {"signals": meta["signals"], "layers": n_layers, "tile": [h, w]},
        "uncompressed_frame_bytes": raw_bytes,
        "generation_tokens_per_s": gen_rate,
        "frames_per_run": args.frames,
        "repeats": args.repeats,
        "append": rows,
        "read": {"zstd" if k else "raw": v for k, v in reads.items()},
        "file_write": writes,
        "target_ratio": TARGET_RATIO,
    }
    zstd_bytes = rows[0]["frame_bytes_per_frame"]
    raw_disk = rows[1]["frame_bytes_per_frame"]
    result["zstd_saving"] = 1 - zstd_bytes / raw_disk

    print(f"\nmodel {result['model']}: {n_layers} layers x {h}x{w} x {len(meta['signals'])} signals "
          f"= {raw_bytes} bytes/frame raw; generation {gen_rate:.1f} tokens/s")  # fmt: skip
    print(f"{'frames':<6} {'commits':<12} {'append f/s':>10} {'x gen':>7} {'blocks p50':>10} {'p95 ms':>7} "
          f"{'frame B/f':>10} {'session B/f':>11}")  # fmt: skip
    for r in rows:
        print(f"{r['compress']:<6} {r['commits']:<12} {r['append_fps']:>10.0f} {r['x_generation']:>7.1f} "
              f"{r['append_blocks_p50_ms']:>10.3f} {r['append_blocks_p95_ms']:>7.2f} "
              f"{r['frame_bytes_per_frame']:>10.0f} {r['session_bytes_per_frame']:>11.0f}")  # fmt: skip
    print(f"\n{'read (ms)':<10} {'1 frame p50':>11} {'p95':>7} {'64 frames p50':>13} {'p95':>7} {'open+1':>7}")
    for name, r in result["read"].items():
        print(f"{name:<10} {r['one_p50_ms']:>11.2f} {r['one_p95_ms']:>7.2f} {r['range64_p50_ms']:>13.2f} "
              f"{r['range64_p95_ms']:>7.2f} {r['open_and_read_one_ms']:>7.2f}")  # fmt: skip
    print(f"\n{'file write':<16} {'bytes':>8} {'us/file':>8} {'x zarr':>7}")
    for r in writes:
        print(f"{r['way']:<16} {r['bytes']:>8} {r['us_per_file']:>8.0f} {r['x_zarr']:>7.2f}")
    best = max(r["x_generation"] for r in rows if r["commits"] == "background")
    verdict = "OK" if best >= TARGET_RATIO else "BELOW"
    print(f"\nzstd saves {100 * result['zstd_saving']:.1f}% of frame bytes; the store appends at up to "
          f"{best:.0f}x the generation rate (target {TARGET_RATIO:.0f}x): {verdict}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
