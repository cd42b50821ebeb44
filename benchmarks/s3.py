"""Capture into S3 against a local store: tokens/s of the same capture written to a local Zarr store
and to ``s3://`` on moto's standalone S3 server (loopback, started here), alternating; medians and
the ratio S3 / local (issue 21's target: >= 0.8).

Two models: the bundled SmolLM2-135M (the real case: the store's commits run on a background
thread beside the forward) and the synthetic backend (no model cost: the store is all there is,
the worst case for S3). Usage::

    python benchmarks/s3.py                      # both, 3 rounds, 48 new tokens
    python benchmarks/s3.py --rounds 5 --tokens 96
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import llmri


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port, and its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def rate(model, store, tokens: int) -> float:
    t0 = time.perf_counter()
    s = llmri.capture(model, "Explain why the sky is blue, in detail.", chat=True, max_new_tokens=tokens,
                      ignore_eos=True, store=store)  # fmt: skip
    return tokens / (time.perf_counter() - t0) if len(s) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--models", default="bundled,synthetic")
    args = ap.parse_args()
    proc, endpoint = start_moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )  # fmt: skip
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("llmri-bench")
    tmp = tempfile.mkdtemp(prefix="llmri-s3-bench-")
    rows = []
    try:
        for name in args.models.split(","):
            if name == "synthetic":
                from llmri.backends.synthetic import SyntheticModel

                model = SyntheticModel()
            else:
                model = llmri.load_model()
            local, remote = f"{tmp}/{name}.zarr", f"s3://llmri-bench/{name}.zarr"
            rate(model, local, 4)  # warm up: calibration, caches, both stores made
            rate(model, remote, 4)
            got: dict[str, list[float]] = {"local": [], "s3": []}
            for r in range(args.rounds):
                order = [("local", local), ("s3", remote)][:: 1 if r % 2 == 0 else -1]
                for where, store in order:
                    got[where].append(rate(model, store, args.tokens))
            lo, s3 = statistics.median(got["local"]), statistics.median(got["s3"])
            rows.append((name, lo, s3, s3 / lo))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.tokens} new tokens, all three signals, median of {args.rounds} alternating rounds")
    print("| model | local tokens/s | S3 (moto) tokens/s | S3 / local |")
    print("| --- | --- | --- | --- |")
    for name, lo, s3, ratio in rows:
        print(f"| {name} | {lo:.1f} | {s3:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
