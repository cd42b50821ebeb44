"""Frame dtypes benchmark (docs/precision.md): what float16 / bfloat16 / float32 frames cost, what the
overflow check costs, and what each dtype does to values and to differences of frames.

On the bundled model (or ``--model``), in one run:

- capture time (all signals, the random reducer, into a Zarr store) per frame dtype, and the store's
  bytes per token (``frames/`` alone, and the whole session), variants alternating, medians;
- the overflow check: the same float16 capture with the check replaced by zeros, alternating, and the
  check alone on one step's tiles, against the time of one captured token;
- precision, measured: neurons captures of the same prompt in each dtype against float32: the largest
  ``|x|``, the largest error of a stored value and of ``resid[l] - resid[l-1]``, beside
  :func:`llmri.capture.precision.rounding_error` / :func:`~llmri.capture.precision.difference_tolerance`
  at that ``|x|``.

Usage::

    python benchmarks/precision.py                       # the bundled SmolLM2-135M
    python benchmarks/precision.py --tokens 8 --rounds 2  # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llmri  # noqa: E402
import llmri.capture.frames as stepframes  # noqa: E402
from _common import alternate, median, save, table  # noqa: E402
from llmri.capture.precision import difference_tolerance, rounding_error  # noqa: E402

DTYPES = ("float16", "bfloat16", "float32")
PROMPT = "Explain why the sky is blue, in detail."


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def capture_costs(model, tokens: int, rounds: int, workdir: Path) -> tuple[list[dict], dict]:
    """Capture time per dtype (and float16 without the overflow check), store bytes per token."""
    real_count = stepframes.count_overflow
    sizes: dict[str, tuple[float, float]] = {}

    def run(dtype: str, check: bool = True):
        def go() -> None:
            path = workdir / f"{dtype}-{check}-{time.perf_counter_ns()}.zarr"
            stepframes.count_overflow = real_count if check else _no_count
            try:
                s = llmri.capture(
                    model,
                    PROMPT,
                    chat=True,
                    max_new_tokens=tokens,
                    ignore_eos=True,
                    frame_dtype=dtype,
                    store=path,
                    progress=False,
                )
            finally:
                stepframes.count_overflow = real_count
            sdir = path / "sessions" / s.id
            sizes[dtype] = (dir_bytes(sdir / "frames") / len(s), dir_bytes(sdir) / len(s))
            shutil.rmtree(path)

        return go

    variants = {d: run(d) for d in DTYPES}
    variants["float16, no overflow check"] = run("float16", check=False)
    times = alternate(variants, rounds=rounds, warmup=1)
    base = median(times["float16"])
    rows = []
    for name, ts in times.items():
        d = name.split(",")[0]
        frames_b, session_b = sizes[d]
        rows.append(
            {
                "frame dtype": name,
                "capture s (median)": median(ts),
                "vs float16": median(ts) / base,
                "frames B/token": frames_b,
                "session B/token": session_b,
            }
        )
    return rows, {"times": times}


def _no_count(values, stored):
    import torch

    return torch.zeros(values.shape[:-2], dtype=torch.int64)


def check_share(model, tokens: int) -> tuple[float, float]:
    """The overflow check's seconds inside one float16 capture (every step, the prefill too, timed
    where it runs) and that capture's seconds."""
    real_count = stepframes.count_overflow
    spent = [0.0]

    def timed(values, stored):
        t0 = time.perf_counter()
        out = real_count(values, stored)
        spent[0] += time.perf_counter() - t0
        return out

    stepframes.count_overflow = timed
    try:
        t0 = time.perf_counter()
        llmri.capture(model, PROMPT, chat=True, max_new_tokens=tokens, ignore_eos=True, progress=False)
        total = time.perf_counter() - t0
    finally:
        stepframes.count_overflow = real_count
    return spent[0], total


def precision_rows(model, tokens: int) -> list[dict]:
    """Each dtype's neurons frames against float32's: value and difference errors, and the bounds."""
    import warnings

    caps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in DTYPES:
            caps[d] = llmri.capture(
                model,
                PROMPT,
                chat=True,
                max_new_tokens=tokens,
                ignore_eos=True,
                reducer="neurons",
                frame_dtype=d,
                progress=False,
            )
    d_model = model.model.config.hidden_size
    exact = caps["float32"].frames("resid").astype(np.float64)
    exact = exact.reshape(*exact.shape[:2], -1)[..., :d_model]
    top = float(np.abs(exact).max())
    dx = np.diff(exact, axis=1)
    rows = []
    for d in DTYPES:
        got = caps[d].frames("resid").astype(np.float64)
        got = got.reshape(*got.shape[:2], -1)[..., :d_model]
        finite = np.isfinite(got)
        err = np.abs(got - exact)[finite]
        gdx = np.diff(got, axis=1)
        ok = np.isfinite(gdx)
        derr = np.abs(gdx - dx)[ok]
        bound = difference_tolerance(d, got[:, 1:][ok], got[:, :-1][ok])
        rows.append(
            {
                "frame dtype": d,
                "max |x| (resid)": top,
                "overflowed": int((~finite).sum()),
                "max value error": float(err.max()),
                "bound at max |x|": float(rounding_error(d, top)),
                "max error of resid[l]-resid[l-1]": float(derr.max()),
                "within difference_tolerance": bool(np.all(np.abs(gdx - dx)[ok] <= bound)),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: the bundled model)")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per capture")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = llmri.load_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="llmri-precision-"))
    try:
        rows, extra = capture_costs(model, args.tokens, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check_s, check_capture_s = check_share(model, args.tokens)
    prec = precision_rows(model, args.tokens)
    cols = ["frame dtype", "capture s (median)", "vs float16", "frames B/token", "session B/token"]
    print(f"{model.name}: {args.tokens} generated tokens, {args.rounds} rounds, all signals, random reducer\n")
    print(table(rows, cols))
    share = check_s / check_capture_s
    print(
        f"\noverflow check: {check_s * 1e3:.1f} ms of a {check_capture_s:.2f} s float16 capture = {100 * share:.2f}%\n"
    )
    pcols = [
        "frame dtype",
        "max |x| (resid)",
        "overflowed",
        "max value error",
        "bound at max |x|",
        "max error of resid[l]-resid[l-1]",
        "within difference_tolerance",
    ]
    print(table(prec, pcols))
    payload = {"model": model.name, "tokens": args.tokens, "rounds": args.rounds, "capture": rows}
    payload |= {"overflow_check_s": check_s, "overflow_check_share": share, "precision": prec, **extra}
    print(f"\nsaved {save('precision', payload)}")


if __name__ == "__main__":
    main()
