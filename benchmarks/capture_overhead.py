"""Capture overhead: plain ``model.generate()`` against llmri capture, on the bundled model.

2 threads, greedy, a 32-token prompt and 128 new tokens (EOS ignored so every run makes 128).
Variants alternate; medians of wall time; tokens/s counts the 128 new tokens. Peak RSS is
measured per variant in a fresh subprocess (ru_maxrss is per process and only grows).

    python benchmarks/capture_overhead.py [--rounds 5] [--backends hf,transformer-lens,nnsight] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, median, peak_rss_mib, save, table  # noqa: E402

PROMPT_TEXT = (
    "In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship that passed. "
    "One stormy night he wrote about a vessel with no lights, drifting silently towards the rocks, and"
)


def setup(threads: int):  # noqa: ANN201
    import torch

    import llmri

    torch.set_num_threads(threads)
    model = llmri.load_model()
    ids = model.tokenizer(PROMPT_TEXT)["input_ids"][:32]
    return model, ids


def variants(model, ids, new_tokens: int, backends: list[str]):  # noqa: ANN001, ANN201
    import torch

    import llmri

    prompt = model.tokenizer.decode(ids)
    inp = torch.tensor([ids])

    def plain() -> None:
        with torch.inference_mode():
            out = model.model.generate(inp, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] == len(ids) + new_tokens

    out = {"generate": plain}
    for backend in backends:
        for label, signals in (("all", ["resid", "attn", "mlp"]), ("resid", ["resid"])):

            def cap(signals=signals, backend=backend) -> None:
                s = llmri.capture(model, prompt, max_new_tokens=new_tokens, ignore_eos=True, signals=signals,
                                  reducer="random", backend=backend)
                assert s.tokens.role.count("generated") == new_tokens

            out[f"llmri-{backend}-{label}"] = cap
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--backends", default="hf,transformer-lens,nnsight")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    model, ids = setup(args.threads)
    vs = variants(model, ids, args.new_tokens, backends)
    if args.rss_child:  # one variant, fresh process: report its peak RSS
        vs[args.rss_child]()
        base = peak_rss_mib()
        vs[args.rss_child]()
        print(json.dumps({"peak_rss_mib": peak_rss_mib(), "after_first_mib": base}))
        return
    times = alternate(vs, args.rounds)
    base = median(times["generate"])
    rss = {}
    for name in vs:
        r = subprocess.run([sys.executable, __file__, "--rss-child", name, "--threads", str(args.threads),
                            "--new-tokens", str(args.new_tokens), "--backends", args.backends],
                           capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        rss[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mib"] if r.returncode == 0 else float("nan")
    rows = []
    for name, ts in times.items():
        m = median(ts)
        rows.append({"variant": name, "median_s": m, "tokens_per_s": args.new_tokens / m, "ratio": m / base,
                     "peak_rss_mib": rss[name], "runs": len(ts)})
    print(f"capture overhead: 32-token prompt, {args.new_tokens} new tokens, greedy, {args.threads} threads, "
          f"{args.rounds} alternating rounds (medians)")
    print(table(rows, ["variant", "median_s", "tokens_per_s", "ratio", "peak_rss_mib", "runs"]))
    print("saved", save("capture_overhead", {"args": vars(args), "rows": rows, "times": times}))


if __name__ == "__main__":
    main()
