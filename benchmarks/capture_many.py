"""Batched capture of a study: tokens/s of ``llmri.capture_many`` at batch 1, 4, 8 and 16.

The bundled model, 64 prompts of mixed length (8 to ~90 words, chat template), 64 new tokens each
(EOS ignored: every row makes them all), all three signals, the random reducer, into a zarr store on
disk, torch on 2 threads. Each run is a fresh subprocess (its peak RSS is its own); the batch sizes
alternate round by round; medians. tokens/s counts new tokens over the whole study's wall time
(prefill, frames and session writes included). ``--no-group`` keeps file order (no length grouping).

    python benchmarks/capture_many.py [--rounds 3] [--quick] [--batches 1,4,8,16] [--no-group]

``--ceiling``: the plain model's decode forward alone at each batch size (the most batching can give).
``tok/CPU-s``: new tokens per CPU-second of the capturing process (all its threads): on a machine
shared with other work, wall time measures the neighbours; CPU time is steadier, and on an idle
machine with the threads busy the two ratios agree. ``--n`` / ``--new``: a smaller study.
``--quick``: 8 prompts, 16 new tokens, batches 1, 4, 8, one round (a shared machine's check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, peak_rss_mib, save, table  # noqa: E402

WORDS = (
    "the old lighthouse keeper wrote about ships storms rocks gulls tides lanterns maps ropes harbours "
    "sailors nets whales fog bells anchors compasses islands"
).split()


def prompts(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        k = 8 + (i * 37) % 83  # mixed lengths, 8 to 90 words
        out.append(
            {"id": f"p{i}", "prompt": "Tell me about " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(k))}
        )
    return out


def one(batch: int, n: int, new: int, threads: int, group: bool) -> dict[str, float]:
    import torch

    import llmri

    torch.set_num_threads(threads)
    model = llmri.load_model()
    llmri.capture(model, "warm up", max_new_tokens=2)  # calibration cache, first-call costs
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = llmri.capture_many(
            model, prompts(n), store=f"{d}/s.zarr", batch_size=batch, max_new_tokens=new, ignore_eos=True, chat=True,
            group=group, progress=False,
        )  # fmt: skip
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "tokens": rep.tokens, "seconds": wall, "tok_s": rep.tokens / wall, "rss_mib": peak_rss_mib(),
        "cpu_s": cpu, "tok_cpu_s": rep.tokens / cpu,
    }  # fmt: skip


def ceiling(batches: list[int], threads: int, rounds: int) -> None:
    """The plain model's decode forward (no llmri, KV cache of 96 positions) at each batch size,
    alternating, medians: new tokens/s of the model alone, the most a batched capture can reach."""
    import torch

    import llmri

    torch.set_num_threads(threads)
    model = llmri.load_model().model
    times: dict[int, list[float]] = {b: [] for b in batches}
    with torch.inference_mode():
        caches = {}
        for b in batches:
            out = model(input_ids=torch.randint(100, 1000, (b, 96)), use_cache=True)
            caches[b] = out.past_key_values if getattr(out, "cache", None) is None else out.cache
        for r in range(rounds):
            for b in batches if r % 2 == 0 else batches[::-1]:
                t0 = time.perf_counter()
                model(input_ids=torch.randint(100, 1000, (b, 1)), cache=caches[b], use_cache=True)
                caches[b].crop(-1)  # back to 96 positions
                times[b].append(time.perf_counter() - t0)
    base = batches[0] / median(times[batches[0]])
    rows = [
        {"batch": b, "forward ms": f"{1000 * median(times[b]):.1f}", "tok/s": f"{b / median(times[b]):.1f}",
         f"x batch {batches[0]}": f"{b / median(times[b]) / base:.2f}"}
        for b in batches
    ]  # fmt: skip
    print(f"plain model decode forward, {threads} threads, {rounds} rounds (medians)")
    print(table(rows, list(rows[0])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="8 prompts, 16 new tokens, batches 1,4,8, 1 round")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,4,8,16; --quick 1,4,8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-group", action="store_true")
    ap.add_argument("--ceiling", action="store_true", help="only the plain model's decode forward per batch size")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=64, help="prompts (default 64)")
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt (default 64)")
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.one, a.n, a.new, a.threads, not a.no_group)))
        return
    if a.ceiling:
        ceiling([int(x) for x in (a.batches or "1,4,8,16").split(",")], a.threads, 2 * a.rounds + 1)
        return
    n, new, rounds = (8, 16, 1) if a.quick else (a.n, a.new, a.rounds)
    batches = [int(x) for x in (a.batches or ("1,4,8" if a.quick else "1,4,8,16")).split(",")]
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for r in range(rounds):
        for b in batches if r % 2 == 0 else batches[::-1]:  # alternate the order round by round
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(b),
                "--n",
                str(n),
                "--new",
                str(new),
                "--threads",
                str(a.threads),
            ]
            cmd += ["--no-group"] if a.no_group else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs[b].append(json.loads(out.strip().splitlines()[-1]))
            print(f"batch {b}: {runs[b][-1]}", file=sys.stderr, flush=True)
    base = median([x["tok_s"] for x in runs[batches[0]]])
    cbase = median([x["tok_cpu_s"] for x in runs[batches[0]]])
    rows = []
    for b in batches:
        ts = median([x["tok_s"] for x in runs[b]])
        tc = median([x["tok_cpu_s"] for x in runs[b]])
        rows.append(
            {
                "batch": b,
                "tok/s": f"{ts:.1f}",
                f"x batch {batches[0]}": f"{ts / base:.2f}",
                "tok/CPU-s": f"{tc:.2f}",
                f"CPU x batch {batches[0]}": f"{tc / cbase:.2f}",
                "s/study": f"{median([x['seconds'] for x in runs[b]]):.1f}",
                "peak RSS MiB": f"{max(x['rss_mib'] for x in runs[b]):.0f}",
            }
        )
    print(f"{n} prompts x {new} new tokens, {a.threads} threads, {rounds} round(s), group={not a.no_group}")
    print(table(rows, list(rows[0])))
    save("capture_many", {"n": n, "new": new, "runs": {str(k): v for k, v in runs.items()}})


if __name__ == "__main__":
    main()
