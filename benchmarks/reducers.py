"""Reducer throughput and the IPCA fit against scikit-learn.

1. frames/s of each reducer's ``transform`` for one token (the live decode case) and for a batch
   of 64 (prefill), on the bundled model's shape (30 layers x 576) and a large-model shape
   (80 x 8192). The ipca reducer's transform cost does not depend on fitted values, so the large
   shape uses random orthonormal components instead of a fit.
2. ``ipca`` fit against scikit-learn's ``IncrementalPCA`` on the same 20,000 activation vectors
   of the bundled model (resid stream, layers 8-24 pooled, calibration text), 256 components:
   wall time and total explained variance side by side.

    python benchmarks/reducers.py [--rounds 5] [--threads 2] [--skip-large]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, median, save, table  # noqa: E402


def throughput(shape: tuple[int, int], rounds: int) -> list[dict]:
    import numpy as np
    import torch

    from llmri import make_reducer

    layers, d = shape
    rows = []
    reducers = {}
    for kind in ("random", "ipca", "neurons"):
        r = make_reducer(kind, tile=None if kind == "neurons" else "16x16")
        r.setup(layers, d, "bench")
        if kind == "ipca":
            q = torch.linalg.qr(torch.randn(layers, d, 256))[0].transpose(1, 2).contiguous()
            r.load_state_dict(
                {
                    "resid.mean": np.zeros((layers, d)),
                    "resid.components": q.numpy(),
                    "resid.explained_variance": np.ones((layers, 256)),
                    "resid.explained_variance_ratio": np.ones((layers, 256)) / d,
                    "resid.n_samples": np.array([1]),
                }
            )
        reducers[kind] = r
    for batch in (1, 64):
        x = torch.randn(batch, layers, d)
        reps = max(1, 256 // batch) if layers * d < 100_000 else max(1, 16 // batch)

        def run(r=None, x=x, reps=reps) -> None:
            for _ in range(reps):
                r.transform(x, "resid")

        times = alternate({k: (lambda r=r: run(r)) for k, r in reducers.items()}, rounds)
        for k, ts in times.items():
            rows.append(
                {
                    "shape": f"{layers}x{d}",
                    "batch": batch,
                    "reducer": k,
                    "frames_per_s": batch * reps / median(ts),
                    "ms_per_call": 1000 * median(ts) / reps,
                }
            )
    return rows


def activation_vectors(n: int = 20_000):  # noqa: ANN201
    import torch

    import llmri
    from llmri.backends.hf import HFBackend
    from llmri.capture.calibration import builtin_text, calibration_acts
    from llmri.capture.codec import TextCodec

    model = llmri.load_model()
    cap = HFBackend(model, ["resid"])
    acts = calibration_acts(cap, TextCodec(model.tokenizer), builtin_text(), ["resid"])["resid"]  # [t, 30, 576]
    pooled = acts[:, 8:25].transpose(0, 1).reshape(-1, acts.shape[-1])
    reps = -(-n // pooled.shape[0])
    pooled = torch.cat([pooled] * reps)[:n] if reps > 1 else pooled[:n]
    g = torch.Generator().manual_seed(0)
    return pooled[torch.randperm(pooled.shape[0], generator=g)].contiguous()


def ipca_vs_sklearn(rounds: int) -> list[dict]:
    import numpy as np
    from sklearn.decomposition import IncrementalPCA

    from llmri.reducers.ipca import TorchIncrementalPCA

    x = activation_vectors()
    xn = x.numpy().astype(np.float64)
    k, bs = 256, 5 * x.shape[1]  # scikit-learn's default batch size: 5 x n_features
    results: dict[str, float] = {}

    def ours(method: str):  # noqa: ANN202
        def fit() -> None:
            p = TorchIncrementalPCA(k, method=method)
            for i in range(0, x.shape[0], bs):
                p.partial_fit(x[None, i : i + bs])
            results[f"llmri-{method}"] = float(p.explained_variance_ratio.sum())

        return fit

    def sk() -> None:
        p = IncrementalPCA(n_components=k, batch_size=bs).fit(xn)
        results["sklearn"] = float(p.explained_variance_ratio_.sum())

    times = alternate({"sklearn": sk, "llmri-cov": ours("cov"), "llmri-svd": ours("svd")}, rounds, warmup=1)
    cov = np.cov(xn, rowvar=False)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    exact = float(ev[:k].sum() / ev.sum())
    base = median(times["sklearn"])
    return [
        {
            "fit": name,
            "median_s": median(ts),
            "speedup_vs_sklearn": base / median(ts),
            "explained_var": results[name],
            "vs_exact_pct": 100 * (results[name] - exact) / exact,
            "n": x.shape[0],
            "d": x.shape[1],
            "k": k,
        }
        for name, ts in times.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = throughput((30, 576), args.rounds)
    if not args.skip_large:
        rows += throughput((80, 8192), max(3, args.rounds // 2))
    print(f"reducer transform throughput ({args.threads} threads, medians of {args.rounds} alternating rounds)")
    print(table(rows, ["shape", "batch", "reducer", "frames_per_s", "ms_per_call"]))
    fit = ipca_vs_sklearn(max(3, args.rounds // 2))
    print("\nipca fit vs scikit-learn IncrementalPCA (same 20,000 vectors, 256 components, float64 exact as reference)")
    print(table(fit, ["fit", "median_s", "speedup_vs_sklearn", "explained_var", "vs_exact_pct", "n", "d", "k"]))
    print(
        "saved",
        save("reducers", {"args": vars(args), "throughput": rows, "ipca_fit": fit, "elapsed_s": time.time() - t0}),
    )


if __name__ == "__main__":
    main()
