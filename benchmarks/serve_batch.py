"""``llmri serve`` with concurrent clients: requests batched (``--max-batch N``) against one at a time
(``--max-batch 1``).

Two real ``llmri serve`` processes on the bundled model (hf backend, loopback, each its own store);
``--clients`` ``openai`` SDK clients at once stream greedy ``/v1/chat/completions`` of different
prompts, ``ignore_eos`` so each makes ``--new-tokens`` tokens. The two servers alternate for
``--rounds`` rounds after a warm-up. Per server (medians over rounds): aggregate tokens/s (all clients'
tokens over the wall time of the round), the mean time to first token, and the slowest client's wall
time. The ratio batched / one at a time of aggregate tokens/s is what batching buys.

    python benchmarks/serve_batch.py [--clients 4] [--rounds 3] [--new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, save, table  # noqa: E402
from serve import start_server  # noqa: E402

ASKS = ["Tell me a story about a lighthouse.", "Why is the sky blue?", "Write a poem about rain.",
        "Explain photosynthesis.", "Name some rivers.", "How do bees fly?", "Describe a city at night.",
        "What is a prime number?"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import openai

    n, k = args.new_tokens, args.clients
    servers = {}
    procs = []
    for label, batch in (("one at a time", 1), (f"batched (max {k})", k)):
        tmp = tempfile.mkdtemp(prefix="llmri-bench-serve-batch-")
        proc, url = start_server(tmp, args.threads, None, "--max-batch", str(batch))
        procs.append(proc)
        servers[label] = url

    def one(url: str, i: int) -> tuple[float, float, int]:
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=1200) as c:
            t0 = time.perf_counter()
            first, count = None, 0
            for ch in c.chat.completions.create(
                model="default", messages=[{"role": "user", "content": ASKS[i % len(ASKS)]}], max_tokens=n,
                temperature=0, stream=True, extra_body={"ignore_eos": True},
            ):  # fmt: skip
                if ch.choices and ch.choices[0].delta.content:
                    first = first or time.perf_counter() - t0
                    count += 1
            return time.perf_counter() - t0, first or 0.0, count

    def round_of(url: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            got = list(pool.map(lambda i: one(url, i), range(k)))
        wall = time.perf_counter() - t0
        return k * n / wall, sum(g[1] for g in got) / k, max(g[0] for g in got)

    try:
        for url in servers.values():  # warm-up: calibration caches, the first requests
            round_of(url)
        res: dict[str, list[tuple[float, float, float]]] = {x: [] for x in servers}
        for r in range(args.rounds):
            for label in list(servers) if r % 2 == 0 else list(reversed(servers)):
                res[label].append(round_of(servers[label]))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    base = median([x[0] for x in res["one at a time"]])
    rows = [
        {"server": label, "tokens/s (all clients)": median([x[0] for x in xs]),
         "vs one at a time": median([x[0] for x in xs]) / base, "first token (s)": median([x[1] for x in xs]),
         "slowest client (s)": median([x[2] for x in xs])}
        for label, xs in res.items()
    ]  # fmt: skip
    cols = ["server", "tokens/s (all clients)", "vs one at a time", "first token (s)", "slowest client (s)"]
    print(f"bundled model, hf backend, {k} clients x {n} new tokens, {args.threads} threads, {args.rounds} rounds")
    print(table(rows, cols))
    save("serve-batch", {"clients": k, "new_tokens": n, "threads": args.threads, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
