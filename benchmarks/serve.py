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

With ``--backend llama.cpp`` the model is the bundled GGUF run by llama.cpp (``llmri serve FILE.gguf``),
and a third variant is llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``, no
activations) on the same file, streamed by the same client: the ratio says what recording costs.
``ignore_eos`` is llmri's; the other server gets the same greedy prompt and ``max_tokens`` (it makes the
same tokens), and tokens/s counts the chunks each returned.

    python benchmarks/serve.py [--rounds 5] [--new-tokens 32] [--threads 2] [--backend hf|llama.cpp]
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


def start_server(tmp: str, threads: int, gguf: str | None, *extra: str) -> tuple[subprocess.Popen, str]:
    log = Path(tmp) / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    model = [gguf] if gguf else []
    cmd = [sys.executable, "-m", "llmri", "serve", *model, "-o", f"{tmp}/served.zarr", "--port", "0", "--quiet", *extra]
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


def start_llama_server(tmp: str, threads: int, gguf: str) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--n_threads", str(threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=open(Path(tmp) / "llama.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("llama_cpp.server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["hf", "llama.cpp"], default="hf")
    args = ap.parse_args()

    import openai
    import torch

    import llmri

    torch.set_num_threads(args.threads)
    n = args.new_tokens
    gguf = None
    if args.backend == "llama.cpp":
        from llmri.models.identity import default_gguf_path

        gguf = str(default_gguf_path())
    model = llmri.load_model(gguf, backend=args.backend if gguf else None)
    tmp = tempfile.mkdtemp(prefix="llmri-bench-serve-")
    store = llmri.open_store(f"{tmp}/inprocess.zarr", create=True)
    procs = []
    proc, url = start_server(tmp, args.threads, gguf)
    procs.append(proc)
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
    name = client.models.list().data[0].id
    other = None
    if gguf:
        proc, other_url = start_llama_server(tmp, args.threads, gguf)
        procs.append(proc)
        other = openai.OpenAI(base_url=other_url, api_key="x", max_retries=0, timeout=600)

    def in_process() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        stamps = []
        for f in llmri.stream(model, PROMPT, max_new_tokens=n, temperature=0, ignore_eos=True, store=store):
            if f.token.role == "generated":
                stamps.append(time.perf_counter())
        return time.perf_counter() - t0, stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def streamed(c: openai.OpenAI, model_name: str, extra: dict) -> tuple[float, float, float, int]:
        t0 = time.perf_counter()
        stamps = []
        for ch in c.chat.completions.create(model=model_name, messages=PROMPT, max_tokens=n, temperature=0,
                                            stream=True, extra_body=extra):  # fmt: skip
            if ch.choices and ch.choices[0].delta.content:
                stamps.append(time.perf_counter())
        return time.perf_counter() - t0, stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)

    variants = {"in-process": in_process, "serve": lambda: streamed(client, name, {"ignore_eos": True})}
    if other is not None:
        other_name = other.models.list().data[0].id
        variants["llama.cpp server"] = lambda: streamed(other, other_name, {})
    try:
        for fn in variants.values():  # warm-up: calibration caches, the server's first request
            fn()
        res: dict[str, list[tuple]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for k in list(variants) if r % 2 == 0 else list(reversed(variants)):
                res[k].append(variants[k]())
    finally:
        client.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    rows = []
    base = n / median([x[0] for x in res["in-process"]])
    for k, xs in res.items():
        tps = median([(x[3] if len(x) > 3 else n) / x[0] for x in xs])
        rows.append({
            "variant": k, "tokens/s": tps, "vs in-process": tps / base,
            "first token (s)": median([x[1] for x in xs]), "streaming tokens/s": median([x[2] for x in xs]),
        })  # fmt: skip
    cols = ["variant", "tokens/s", "vs in-process", "first token (s)", "streaming tokens/s"]
    print(
        f"bundled model, {args.backend} backend, {n} new tokens, {args.threads} threads, {args.rounds} rounds (medians)"
    )
    print(table(rows, cols))
    save(
        "serve" if args.backend == "hf" else "serve-llamacpp",
        {"new_tokens": n, "threads": args.threads, "rounds": args.rounds, "rows": rows},
    )


if __name__ == "__main__":
    main()
