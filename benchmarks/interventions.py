"""Interventions benchmark (docs/interventions.md): what steering, ablation and patching cost a capture,
and what the patching sweep costs.

On the bundled model (or ``--model``), greedy, ``ignore_eos``:

- a capture with one intervention against the same capture without, variants alternating, medians
  (targets: steering at one layer <= 1.05x, ablation the same): steer resid at one layer, steer with
  ``norm="match"``, ablate a whole mlp output, ablate 16 resid neurons, project a direction out, and
  patch resid at one layer from another prompt run on the spot (its source forward included);
- the patching sweep of the issue's size (a ~20-token prompt pair, every layer x resid/attn/mlp x
  every position) with the forwards batched (``batch=64``, the default) against one cell per forward
  (``batch=1``, timed on a slice and scaled to the whole sweep: it is the same forward per cell).

Usage::

    python benchmarks/interventions.py                        # 32 new tokens, 5 rounds
    python benchmarks/interventions.py --tokens 8 --rounds 2  # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import llmri  # noqa: E402
from _common import alternate, median, save, table  # noqa: E402
from llmri.interventions.patching import sweep  # noqa: E402

PROMPT = "Explain why the sky is blue, in detail."
# a pair of equal token count (checked below), ~20 tokens, whose answers differ in one city
CLEAN = "The Eiffel Tower, the famous iron landmark built in 1889, stands in the city of"
CORRUPT = "The Colosseum, the famous stone landmark built in the year 80, stands in the city of"
LAYER = 12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-sweep", action="store_true", help="only the per-capture costs")
    args = ap.parse_args()
    model = llmri.load_model(args.model)
    d = model.d_model
    kw = {"max_new_tokens": args.tokens, "ignore_eos": True, "progress": False}
    v = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    v /= np.linalg.norm(v)
    variants = {
        "none": [],
        f"steer resid@{LAYER}": [llmri.steer(v, layers=LAYER, scale=8.0)],
        f"steer resid@{LAYER} norm=match": [llmri.steer(v, layers=LAYER, scale=0.5, norm="match")],
        f"ablate mlp@{LAYER}": [llmri.ablate(LAYER, "mlp")],
        f"ablate 16 resid neurons@{LAYER}": [llmri.ablate(LAYER, "resid", neurons=list(range(16)))],
        f"ablate direction@{LAYER}": [llmri.ablate(LAYER, "resid", direction=v)],
        f"patch resid@{LAYER} (prompt)": [llmri.patch("Tell me why grass is green.", layers=LAYER, positions="prompt")],
    }
    times = alternate(
        {name: (lambda iv=iv: llmri.capture(model, PROMPT, interventions=iv, **kw)) for name, iv in variants.items()},
        rounds=args.rounds,
    )
    base = median(times["none"])
    rows = [
        {"capture": name, "median s": median(t), "ratio": median(t) / base, "ms/token": 1e3 * median(t) / args.tokens}
        for name, t in times.items()
    ]
    print(f"## {args.tokens} new tokens, one intervention against none (medians of {args.rounds}, alternating)\n")
    print(table(rows, ["capture", "median s", "ratio", "ms/token"]))

    sweeps: list[dict[str, object]] = []
    if not args.no_sweep:
        n = len(model.tokenizer(CLEAN)["input_ids"])
        assert n == len(model.tokenizer(CORRUPT)["input_ids"]), "the pair must have one token count"
        cells = model.n_layers * 3 * n
        t0 = time.perf_counter()
        full = sweep(model, CLEAN, CORRUPT, targets=(" Paris", " Rome"))
        batched = time.perf_counter() - t0
        # one cell per forward, on one signal and 3 layers (3n forwards), scaled to every cell
        some = 3
        t1 = time.perf_counter()
        sweep(model, CLEAN, CORRUPT, targets=(" Paris", " Rome"), signals=("resid",), layers=range(some), batch=1)
        per_cell = (time.perf_counter() - t1) / (some * n)
        sweeps = [
            {"sweep": "batch 64", "cells": cells, "forwards": -(-model.n_layers * n // 64) * 3, "s": batched,
             "ms/cell": 1e3 * batched / cells},
            {"sweep": "batch 1 (scaled)", "cells": cells, "forwards": cells, "s": per_cell * cells,
             "ms/cell": 1e3 * per_cell},
        ]  # fmt: skip
        print(f"\n## Patching sweep: {n}-token pair, {model.n_layers} layers x resid/attn/mlp x {n} positions\n")
        print(table(sweeps, ["sweep", "cells", "forwards", "s", "ms/cell"]))
        print(f"\nclean {full.clean:.2f}, corrupt {full.corrupt:.2f} (logit diff Paris - Rome); "
              f"batched {per_cell * cells / batched:.1f}x faster than one cell per forward")  # fmt: skip
    save("interventions", {"tokens": args.tokens, "rounds": args.rounds, "captures": rows, "sweep": sweeps})


if __name__ == "__main__":
    main()
