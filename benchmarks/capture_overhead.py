"""Capture overhead: plain decoding against llmri capture, on the bundled model.

2 threads, greedy, a 32-token prompt and 128 new tokens (EOS ignored so every run makes 128).
Variants alternate; medians of wall time; tokens/s counts the 128 new tokens. Peak RSS is
measured per variant in a fresh subprocess (ru_maxrss is per process and only grows).

The torch backends (hf, transformer-lens, nnsight) are compared with plain ``model.generate()``;
``llama.cpp`` with plain llama.cpp decoding through the same low-level API without the eval callback
(``llama.cpp-plain``, same context settings), and, when ``hf`` runs too, with the hf backend's capture
(``x_hf``). ``--store`` writes every capture into a zarr store on disk. Per new token: the time inside
the engine (``llama_decode`` with its eval callback; the model's forward with the hf backend's hooks, for
``generate()`` and the hf captures), the time outside it (the run's wall time less that: llmri's frames,
reducer, statistics and store hand-off, or ``generate()``'s own loop), and the process's CPU time on every
thread (work moved to a thread would show there, not in the time outside).

    python benchmarks/capture_overhead.py [--rounds 5] [--backends hf,transformer-lens,nnsight,llama.cpp]
                                          [--new-tokens 128] [--threads 2] [--store]
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
from _common import alternate, median, peak_rss_mib, save, table  # noqa: E402

PROMPT_TEXT = (
    "In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship that passed. "
    "One stormy night he wrote about a vessel with no lights, drifting silently towards the rocks, and"
)
TORCH_BACKENDS = ("hf", "transformer-lens", "nnsight")


def setup(threads: int, backends: list[str]):  # noqa: ANN201
    import torch

    import llmri
    from llmri.backends.llamacpp import load_gguf

    torch.set_num_threads(threads)
    model = llmri.load_model() if any(b in TORCH_BACKENDS for b in backends) else None
    gguf = load_gguf(n_threads=threads) if "llama.cpp" in backends else None
    tok = (model or gguf).tokenizer
    ids = tok(PROMPT_TEXT)["input_ids"][:32]
    return model, gguf, ids


def variants(model, gguf, ids, new_tokens: int, backends: list[str], store):  # noqa: ANN001, ANN201
    import torch

    import llmri

    tok = (model or gguf).tokenizer
    prompt = tok.decode(ids)
    out = {}
    if model is not None:
        inp = torch.tensor([ids])

        def plain() -> None:
            with torch.inference_mode():
                out = model.model.generate(inp, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            assert out.shape[1] == len(ids) + new_tokens

        out["generate"] = plain
    if gguf is not None:
        from _llamacpp import PlainDecoder

        assert gguf.tokenizer(prompt)["input_ids"] == ids
        decoder = PlainDecoder(gguf)

        def plain_llama() -> None:
            assert len(decoder.generate(ids, new_tokens)) == new_tokens

        out["llama.cpp-plain"] = plain_llama
    for backend in backends:
        m = gguf if backend == "llama.cpp" else model
        for label, signals in (("all", ["resid", "attn", "mlp"]), ("resid", ["resid"])):

            def cap(signals=signals, backend=backend, m=m) -> None:
                s = llmri.capture(
                    m,
                    prompt,
                    max_new_tokens=new_tokens,
                    ignore_eos=True,
                    signals=signals,
                    reducer="random",
                    backend=backend,
                    store=store,
                )
                assert s.tokens.role.count("generated") == new_tokens

            out[f"llmri-{backend}-{label}"] = cap
    for label, kw in READOUT_VARIANTS.items():  # --readouts: the hf capture (all signals) with readouts on

        def cap_readouts(kw=kw) -> None:
            s = llmri.capture(
                model, prompt, max_new_tokens=new_tokens, ignore_eos=True, reducer="random", store=store, **kw
            )
            assert s.tokens.role.count("generated") == new_tokens and s.readouts

        out[f"llmri-hf-all-{label}"] = cap_readouts
    return out


#: The readout variants ``--readouts`` adds (the hf backend, every signal), against plain generate().
READOUT_VARIANTS: dict[str, dict] = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--backends", default="hf,transformer-lens,nnsight")
    ap.add_argument("--store", action="store_true", help="write every capture into a zarr store on disk")
    ap.add_argument(
        "--readouts",
        action="store_true",
        help="also hf captures with lens=True, attention=True, both, the lens in bfloat16 (lens_dtype) and "
        "one position at a time (lens_batch=1)",
    )
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--no-rss", action="store_true", help="skip the per-variant peak RSS subprocesses")
    args = ap.parse_args()
    if args.readouts:
        both = {"lens": True, "attention": True}
        bf16 = {"lens_dtype": "bfloat16"}
        READOUT_VARIANTS.update(lens={"lens": True}, attention={"attention": True}, both=both)
        READOUT_VARIANTS.update({"lens-bf16": {"lens": True, **bf16}, "both-bf16": {**both, **bf16}})
        # the lens one position at a time (a stream's default, and capture()'s before lens_batch)
        READOUT_VARIANTS.update({"lens-batch1": {"lens": True, "lens_batch": 1}})
    backends = [b for b in args.backends.split(",") if b]
    tmp = tempfile.TemporaryDirectory(prefix="llmri-bench-overhead-")
    store = None
    if args.store:
        import llmri

        store = llmri.open_store(Path(tmp.name) / "bench.zarr", create=True)
    model, gguf, ids = setup(args.threads, backends)
    vs = variants(model, gguf, ids, args.new_tokens, backends, store)
    if args.rss_child:  # one variant, fresh process: report its peak RSS
        vs[args.rss_child]()
        base = peak_rss_mib()
        vs[args.rss_child]()
        print(json.dumps({"peak_rss_mib": peak_rss_mib(), "after_first_mib": base}))
        return
    # seconds inside the engine per run: llama_decode (its eval callback included) for llama.cpp variants,
    # the model's forward (the hf backend's hooks included) for generate() and the hf captures; and the
    # process's CPU seconds per run (every thread: a frame thread's work would show here)
    inside: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    cpu_inside: dict[str, list[float]] = {}  # the main thread's CPU inside the forward (hf variants)
    clocks = {}
    if gguf is not None:
        from _llamacpp import DecodeClock

        clocks["llama.cpp"] = DecodeClock()
    if model is not None:
        from _torchclock import ForwardClock

        clocks["hf"] = ForwardClock(model)

    def timed(name, fn, clock):  # noqa: ANN001, ANN202
        def run() -> None:
            if clock is not None:
                clock.take()
                getattr(clock, "take_cpu", float)()
            c0 = time.process_time()
            fn()
            cpu.setdefault(name, []).append(time.process_time() - c0)
            if clock is not None:
                inside.setdefault(name, []).append(clock.take())
                if hasattr(clock, "take_cpu"):
                    cpu_inside.setdefault(name, []).append(clock.take_cpu())

        return run

    def clock_of(name: str):  # noqa: ANN202
        if "llama.cpp" in name:
            return clocks.get("llama.cpp")
        return clocks.get("hf") if name == "generate" or name.startswith("llmri-hf") else None

    vs = {k: timed(k, f, clock_of(k)) for k, f in vs.items()}
    times = alternate(vs, args.rounds)
    rss = {}
    for name in vs if not args.no_rss else ():
        cmd = [sys.executable, __file__, "--rss-child", name, "--threads", str(args.threads)]
        cmd += ["--new-tokens", str(args.new_tokens), "--backends", args.backends] + (["--store"] if args.store else [])
        cmd += ["--readouts"] if args.readouts else []
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        rss[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mib"] if r.returncode == 0 else float("nan")
    rows = []
    n = args.new_tokens
    for name, ts in times.items():
        m = median(ts)
        llama = "llama.cpp" in name
        base = "llama.cpp-plain" if llama else "generate"
        row = {"variant": name, "median_s": m, "tokens_per_s": n / m, "runs": len(ts)}
        if base in times and llama:
            row["speed_vs_plain"] = median(times[base]) / m
        elif base in times:
            row["ratio"] = m / median(times[base])  # time, as before: 1.08 is 8% slower than generate()
        if llama and name.startswith("llmri") and "llmri-hf-all" in times and name.endswith("-all"):
            row["x_hf"] = median(times["llmri-hf-all"]) / m
        if name in inside:
            # the run's wall time less its time inside llama_decode / the forward (run by run, then the median)
            runs = inside[name][-len(ts) :]  # the warm-up left out
            row["outside_ms_per_token"] = 1000 * median([t - i for t, i in zip(ts, runs, strict=True)]) / n
            row["decode_ms_per_token" if llama else "forward_ms_per_token"] = 1000 * median(runs) / n
        row["cpu_ms_per_token"] = 1000 * median(cpu[name][-len(ts) :]) / n
        if name in cpu_inside and args.threads == 1:  # CPU outside the forward: with one thread, all CPU is this one's
            pairs = zip(cpu[name][-len(ts) :], cpu_inside[name][-len(ts) :], strict=True)
            row["outside_cpu_ms_per_token"] = 1000 * median([c - i for c, i in pairs]) / n
        row["peak_rss_mib"] = rss.get(name, float("nan"))
        rows.append(row)
    load = os.getloadavg()
    print(
        f"capture overhead: 32-token prompt, {n} new tokens, greedy, {args.threads} threads, "
        f"{args.rounds} alternating rounds (medians), store={'zarr' if args.store else 'none'}; "
        f"load average {load[0]:.1f}/{load[1]:.1f}"
    )
    cols = ["variant", "median_s", "tokens_per_s", "ratio", "speed_vs_plain", "x_hf"]
    cols += ["decode_ms_per_token", "forward_ms_per_token", "outside_ms_per_token", "outside_cpu_ms_per_token"]
    cols += ["cpu_ms_per_token"]
    cols += ["peak_rss_mib", "runs"]
    print(table(rows, [c for c in cols if any(c in r for r in rows)]))
    name = "capture_overhead" + ("_llamacpp" if gguf is not None else "") + ("_readouts" if args.readouts else "")
    payload = {"args": vars(args), "load_average": load, "rows": rows, "times": times, "inside": inside, "cpu": cpu}
    print("saved", save(name, payload))
    tmp.cleanup()


if __name__ == "__main__":
    main()
