"""``llmri serve``: tokens/s of one streaming client against the same capture in-process, and time to
first token.

On the bundled model (hf backend), greedy, the same chat prompt, EOS ignored so every run makes
``--new-tokens`` tokens, each recorded into a Zarr store on disk:

* ``in-process``: ``llmri.stream()`` of the prompt into a store, iterated to the end (the capture that
  the server runs for each request);
* ``serve``: a real ``llmri serve`` (subprocess, loopback, its own store) and one ``openai`` SDK client
  streaming ``/v1/chat/completions`` (``ignore_eos``: the vLLM extension the server accepts), read to
  ``[DONE]``.

Both alternate for ``--rounds`` rounds after a warm-up. Per variant (medians): end-to-end tokens/s
(``n / wall``, the store closed for in-process, ``[DONE]`` for serve), time to first token (the first
generated token's frame / the first content chunk) and the streaming rate ``(n - 1) / (last - first)``.
The ratio serve / in-process of tokens/s is the target (>= 0.9).

    python benchmarks/serve.py [--rounds 5] [--new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, save, table  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}]


def start_server(tmp: str, threads: int) -> tuple[subprocess.Popen, str]:
    log = Path(tmp) / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "llmri", "serve", "-o", f"{tmp}/served.zarr", "--port", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        m = re.search(r"API at (http://\S+)/v1", log.read_text())
        if m:
            return proc, m.group(1) + "/v1"
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.2)
    raise SystemExit("llmri serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import openai
    import torch

    import llmri

    torch.set_num_threads(args.threads)
    n = args.new_tokens
    model = llmri.load_model()
    tmp = tempfile.mkdtemp(prefix="llmri-bench-serve-")
    store = llmri.open_store(f"{tmp}/inprocess.zarr", create=True)
    proc, url = start_server(tmp, args.threads)
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
    name = client.models.list().data[0].id

    def in_process() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        stamps = []
        for f in llmri.stream(model, PROMPT, max_new_tokens=n, temperature=0, ignore_eos=True, store=store):
            if f.token.role == "generated":
                stamps.append(time.perf_counter())
        return time.perf_counter() - t0, stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def served() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        stamps = []
        for c in client.chat.completions.create(model=name, messages=PROMPT, max_tokens=n, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True}):  # fmt: skip
            if c.choices and c.choices[0].delta.content:
                stamps.append(time.perf_counter())
        return time.perf_counter() - t0, stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])

    variants = {"in-process": in_process, "serve": served}
    try:
        for fn in variants.values():  # warm-up: calibration caches, the server's first request
            fn()
        res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for k in list(variants) if r % 2 == 0 else list(reversed(variants)):
                res[k].append(variants[k]())
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    rows = []
    base = n / median([x[0] for x in res["in-process"]])
    for k, xs in res.items():
        tps = n / median([x[0] for x in xs])
        rows.append({
            "variant": k, "tokens/s": tps, "vs in-process": tps / base,
            "first token (s)": median([x[1] for x in xs]), "streaming tokens/s": median([x[2] for x in xs]),
        })  # fmt: skip
    cols = ["variant", "tokens/s", "vs in-process", "first token (s)", "streaming tokens/s"]
    print(f"bundled model, hf backend, {n} new tokens, {args.threads} threads, {args.rounds} rounds (medians)")
    print(table(rows, cols))
    save("serve", {"new_tokens": n, "threads": args.threads, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
