"""SAE features benchmark (docs/sae.md): what ``saes=[...]`` costs a capture.

On the bundled model (or ``--model``), SAEs of random weights (the cost does not depend on them):

- the issue's case: top-32 features of 3 SAEs of ``d_sae`` 16,384 at 3 layers (resid 8, 15, 22)
  against the same capture without SAEs (target <= 1.15x), variants alternating, medians;
- the cost of one SAE at each ``d_sae`` (4k, 16k, 32k), from captures with one SAE against none,
  per generated token;
- the encode alone (one step's vector through ``sae_readout``), per SAE and ``d_sae``.

Usage::

    python benchmarks/sae.py                        # 32 new tokens, 5 rounds
    python benchmarks/sae.py --tokens 8 --rounds 2  # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import llmri  # noqa: E402
from _common import alternate, median, save, table  # noqa: E402
from llmri.readouts.sae import SAE, sae_readout  # noqa: E402

PROMPT = "Explain why the sky is blue, in detail."
LAYERS = (8, 15, 22)


def random_sae(d_in: int, d_sae: int, layer: int, seed: int) -> SAE:
    """Random weights, TopK with k=64: the sparsity of a real SAE (its L0 decides the decode's cost)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    return SAE(
        W_enc=w, b_enc=torch.zeros(d_sae), W_dec=w.T.contiguous(), b_dec=torch.zeros(d_in), architecture="topk", k=64,
        name=f"r{layer}_{d_sae}", source_format="random", path="", layer=layer, signal="resid",
    )  # fmt: skip


def step_costs(model, three: list[SAE], rounds: int = 40) -> dict[str, float]:
    """One decode forward of the model (KV cache, one token) against one step's readout of the three
    SAEs (``sae_readout``, top-32), alternating, medians in ms: the capture's added work per token,
    measured apart from the rest of the capture (steadier than whole captures on a busy machine)."""
    ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        cache = model.model(ids, use_cache=True).past_key_values
    acts = {"resid": torch.randn(1, model.n_layers, model.d_model) * 5}

    def forward() -> None:
        with torch.inference_mode():
            model.model(ids[:, -1:], past_key_values=cache, use_cache=True)
            cache.crop(-1)

    t = alternate({"forward": forward, "3 SAEs": lambda: sae_readout(three, acts, k=32)}, rounds=rounds)
    return {name: 1e3 * median(v) for name, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-scaling", action="store_true", help="only the 3-SAE comparison")
    args = ap.parse_args()
    model = llmri.load_model(args.model)
    d = model.d_model
    kw = {"max_new_tokens": args.tokens, "ignore_eos": True, "progress": False}

    three = [random_sae(d, 16384, layer, i) for i, layer in enumerate(LAYERS)]
    times = alternate(
        {
            "none": lambda: llmri.capture(model, PROMPT, **kw),
            "3 SAEs x 16k": lambda: llmri.capture(model, PROMPT, saes=three, sae_k=32, **kw),
        },
        rounds=args.rounds,
    )
    base = median(times["none"])
    rows = [
        {"capture": name, "median s": median(t), "ratio": median(t) / base, "ms/token": 1e3 * median(t) / args.tokens}
        for name, t in times.items()
    ]
    print(f"## {args.tokens} new tokens, top-32 of 3 SAEs (d_sae 16384, resid {', '.join(map(str, LAYERS))})\n")
    print(table(rows, ["capture", "median s", "ratio", "ms/token"]))
    step = step_costs(model, three)
    print("\n## One decode step: the model's forward against the 3 SAEs' readout (medians, ms)\n")
    print(table([{**step, "ratio": step["3 SAEs"] / step["forward"]}], ["forward", "3 SAEs", "ratio"]))

    scaling: list[dict[str, float]] = []
    for d_sae in () if args.no_scaling else (4096, 16384, 32768):
        one = [random_sae(d, d_sae, 15, 7)]
        t = alternate(
            {
                "none": lambda: llmri.capture(model, PROMPT, **kw),
                "one": lambda one=one: llmri.capture(model, PROMPT, saes=one, sae_k=32, **kw),  # type: ignore[misc]
            },
            rounds=args.rounds,
        )
        x = torch.randn(1, 30, d)
        acts = {"resid": x}
        sae_readout(one, acts, k=32)
        enc = []
        for _ in range(50):
            t0 = time.perf_counter()
            sae_readout(one, acts, k=32)
            enc.append(time.perf_counter() - t0)
        per_token = (median(t["one"]) - median(t["none"])) / args.tokens
        scaling.append(
            {
                "d_sae": d_sae,
                "ratio": median(t["one"]) / median(t["none"]),
                "ms/token per SAE": 1e3 * per_token,
                "encode alone ms": 1e3 * median(enc),
                "weights MiB": 2 * d * d_sae * 4 / 2**20,
            }
        )
    if scaling:
        print("\n## One SAE (resid 15) by d_sae: capture time against none, and the encode alone\n")
        print(table(scaling, ["d_sae", "ratio", "ms/token per SAE", "encode alone ms", "weights MiB"]))
    save("sae", {"tokens": args.tokens, "rounds": args.rounds, "three": rows, "step": step, "scaling": scaling})


if __name__ == "__main__":
    main()
