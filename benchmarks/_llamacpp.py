"""Plain llama.cpp decoding through llama-cpp-python's low-level API (no eval callback): the baseline the
``llama.cpp`` backend is measured against, on a context made with the same settings as the backend's.
Run as a script, it compares the backend's eval callback in C with its Python one (see :func:`main`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


class PlainDecoder:
    """Greedy decoding as a llama.cpp program does it: the prompt in one batch with only the last
    position's logits, then one ``llama_decode`` per new token (the last token needs none)."""

    def __init__(self, model: Any) -> None:  # a GGUFModel
        import llama_cpp as L

        self.L = L
        self.ctx = model.new_context(eval_callback=False)
        self.batch = L.llama_batch_init(512, 0, 1)

    def _decode(self, ids: list[int], start: int) -> None:
        b = self.batch
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = t, start + i, 1, 0
            b.logits[i] = i == len(ids) - 1
        b.n_tokens = len(ids)
        if self.L.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def generate(self, ids: list[int], n: int, on_token: Callable[[int], None] | None = None) -> list[int]:
        L, c = self.L, self.ctx.ctx
        L.llama_memory_clear(L.llama_get_memory(c), True)
        self._decode(list(ids), 0)
        out: list[int] = []
        for i in range(n):
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(c, -1), shape=(self.ctx.n_vocab,))
            tok = int(logits.argmax())
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if i < n - 1:
                self._decode([tok], len(ids) + i)
        return out

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.ctx.close()


class DecodeClock:
    """Seconds spent inside ``llama_decode`` (the eval callback included), by patching llama_cpp's binding."""

    def __init__(self) -> None:
        import llama_cpp as L

        self.seconds = 0.0
        real = L.llama_decode

        def timed(ctx: Any, batch: Any) -> int:
            t0 = time.perf_counter()
            try:
                return real(ctx, batch)
            finally:
                self.seconds += time.perf_counter() - t0

        L.llama_decode = timed

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def per_decode(models: dict[str, Any], ids: list[int], n: int) -> dict[str, list[float]]:
    """Seconds per ``llama_decode`` of one token after ``ids``, every signal recorded, ``n`` times per
    variant, interleaved decode by decode (the callback's own cost, without frames or a store):
    ``plain`` (no callback, on the first model) and one entry per model in ``models`` (name -> GGUFModel)."""
    from llmri.backends.llamacpp import LlamaCppBackend
    from llmri.backends.llamacpp.recorder import Recorder

    first = next(iter(models.values()))
    plain = first.new_context(eval_callback=False)
    ctxs = {"plain": (None, plain)} | {k: (LlamaCppBackend(m), m.context()) for k, m in models.items()}
    for _, ctx in ctxs.values():
        ctx.reset()
        ctx.decode(ids)
    times: dict[str, list[float]] = {k: [] for k in ctxs}
    for i in range(n + 20):  # 20 warm-up rounds
        for name in list(ctxs) if i % 2 else reversed(list(ctxs)):
            cap, ctx = ctxs[name]
            if cap is None:
                t0 = time.perf_counter()
                ctx.decode([ids[-1]])
                dt = time.perf_counter() - t0
            else:
                layers = cap._layers
                rec = Recorder(cap._lib, cap._slots, len(layers), 1, layers, cap.d_model, stacked=len(cap.signals))
                with ctx.recording(rec):
                    rec.start(0, 1)
                    t0 = time.perf_counter()
                    ctx.decode([ids[-1]])
                    dt = time.perf_counter() - t0
                assert rec.error is None and rec.seen == rec.slots.keys()
            ctx.rollback(len(ids))
            if i >= 20:
                times[name].append(dt)
    plain.close()
    return times


def main() -> None:
    """``python benchmarks/_llamacpp.py``: llmri's eval callback in C against its Python one and plain
    llama.cpp (and the hf capture with ``--hf``), alternated in one process; see docs/backends.md."""
    import argparse
    import os
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import alternate, median, save, table
    from capture_overhead import PROMPT_TEXT

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hf", action="store_true", help="also the hf backend's capture (x_hf)")
    ap.add_argument("--steps", action="store_true", help="also bare step loops (no frames, no store)")
    ap.add_argument("--save", default="", help="save the results as benchmarks/results/<name>.json")
    ap.add_argument("--per-decode", type=int, default=0, help="only this many one-token decodes per variant")
    args = ap.parse_args()
    import torch

    import llmri
    from llmri.backends.llamacpp import LlamaCppBackend, load_gguf

    torch.set_num_threads(args.threads)

    def model(native: bool) -> Any:  # the variable is read when the model's context is made
        os.environ["LLMRI_LLAMACPP_NATIVE"] = "1" if native else "0"
        m = load_gguf(n_threads=args.threads)
        assert m.context().native == native, "no C compiler here?"
        return m

    py, nat = model(False), model(True)
    ids = nat.tokenizer(PROMPT_TEXT)["input_ids"][:32]
    if args.per_decode:
        times = per_decode({"python": py, "native": nat}, ids, args.per_decode)
        base = median(times["plain"])
        rows = [
            {"variant": k, "median_ms": 1000 * median(v), "over_plain_ms": 1000 * (median(v) - base), "runs": len(v)}
            for k, v in times.items()
        ]
        print(f"ms per one-token llama_decode at position {len(ids)}, all signals; load {os.getloadavg()[0]:.1f}")
        print(table(rows, ["variant", "median_ms", "over_plain_ms", "runs"]))
        if args.save:
            print("saved", save(args.save, {"args": vars(args), "rows": rows, "times": times}))
        return
    prompt, n = nat.tokenizer.decode(ids), args.new_tokens
    tmp = tempfile.TemporaryDirectory(prefix="llmri-bench-native-")
    store = llmri.open_store(Path(tmp.name) / "bench.zarr", create=True)
    decoder = PlainDecoder(nat)
    variants: dict[str, Callable[[], Any]] = {"llama.cpp-plain": lambda: decoder.generate(ids, n)}

    def capture(m: Any, signals: list[str], backend: str = "llama.cpp") -> Callable[[], None]:
        def run() -> None:
            kw = {"signals": signals, "reducer": "random", "backend": backend, "store": store}
            s = llmri.capture(m, prompt, max_new_tokens=n, ignore_eos=True, **kw)
            assert s.tokens.role.count("generated") == n

        return run

    def steps(m: Any) -> Callable[[], None]:
        cap = LlamaCppBackend(m)

        def run() -> None:
            st = cap.step(torch.tensor([ids]))
            for _ in range(n - 1):
                st = cap.step(torch.tensor([[int(st.logits[-1].argmax())]]), st.cache)

        return run

    for label, signals in (("all", ["resid", "attn", "mlp"]), ("resid", ["resid"])):
        variants[f"python-{label}"] = capture(py, signals)
        variants[f"native-{label}"] = capture(nat, signals)
    if args.steps:
        variants["steps-python"], variants["steps-native"] = steps(py), steps(nat)
    if args.hf:
        variants["hf-all"] = capture(llmri.load_model(), ["resid", "attn", "mlp"], "hf")
    clock, inside = DecodeClock(), {}

    def timed(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            clock.take()
            fn()
            inside.setdefault(name, []).append(clock.take())

        return run

    times = alternate({k: timed(k, f) for k, f in variants.items()}, args.rounds)
    rows = []
    for name, ts in times.items():
        m = median(ts)
        row: dict[str, Any] = {"variant": name, "median_s": m, "tokens_per_s": n / m}
        row["x_plain"] = median(times["llama.cpp-plain"]) / m
        if "hf-all" in times and name.endswith("-all"):
            row["x_hf"] = median(times["hf-all"]) / m
        if name != "hf-all":
            runs = inside[name][-len(ts) :]
            row["decode_ms_per_token"] = 1000 * median(runs) / n
            row["outside_ms_per_token"] = 1000 * median([t - i for t, i in zip(ts, runs, strict=True)]) / n
        rows.append(row)
    load = os.getloadavg()
    print(
        f"{n} new tokens, {args.threads} thread(s), {args.rounds} alternating rounds (medians), zarr store; "
        f"load average {load[0]:.1f}/{load[1]:.1f}"
    )
    cols = ["variant", "median_s", "tokens_per_s", "x_plain", "x_hf", "decode_ms_per_token", "outside_ms_per_token"]
    print(table(rows, cols))
    if args.save:
        print("saved", save(args.save, {"args": vars(args), "load_average": load, "rows": rows, "times": times}))
    decoder.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
