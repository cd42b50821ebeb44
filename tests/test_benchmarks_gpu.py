"""benchmarks/gpu.py (issue #24), the one command a GPU session runs: its dry run on the CPU goes
through every step at a tiny size and writes every row the GPU table in docs/benchmarks.md needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = [
    "cuda tests",
    "frames cuda vs cpu",
    "overhead 135M bfloat16",
    "overhead 1B bfloat16",
    "overhead 135M float16",
    "overhead 1B float16",
]
BF16 = [
    "generate()",
    "llmri all signals",
    "llmri resid only",
    "lens exact",
    "lens bfloat16",
    "attention top-16",
    "lens exact + attention top-16",
]
ROW_KEYS = {"median_s", "tokens_per_s", "x_generate", "forward_ms_per_token", "outside_ms_per_token"}


@pytest.mark.slow
def test_gpu_benchmark_dry_run_writes_every_row(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["env"]["card"] and data["env"]["device"] == "cpu"
    assert list(data["sections"]) == SECTIONS
    for name in SECTIONS:
        assert "error" not in data["sections"][name] and "skipped" not in data["sections"][name], name
    # pytest -m cuda selects exactly the tests marked cuda (collected here, run on the GPU)
    tests = data["sections"]["cuda tests"]
    assert tests["rc"] == 0 and tests["tests"] >= 1
    assert all("cuda" in t for t in tests["collected"]), tests["collected"]
    frames = data["sections"]["frames cuda vs cpu"]
    assert frames["equal_within_rtol"] and set(frames["max_rel_diff"]) == {"resid", "attn", "mlp"}
    for name in SECTIONS[2:]:
        rows = {row["variant"]: row for row in data["sections"][name]["rows"]}
        assert list(rows) == (BF16 if "bfloat16" in name else BF16[:2]), name
        assert all(ROW_KEYS <= set(row) for row in rows.values())
    wanted = [t["target"] for t in data["targets"]]
    for label in ("SmolLM2-135M shape", "~1B Llama shape"):
        assert f"capture / generate(), {label}, bfloat16" in wanted
        assert f"capture / generate(), {label}, float16" in wanted
        assert f"outside the forward, {label}" in wanted
        assert f"lens exact + attention top-16 / generate(), {label}" in wanted
    assert {"every CUDA test passes", "frames on CUDA equal the CPU's"} <= set(wanted)
    # measured targets are judged (met or not); the CUDA tests only on a GPU, live chat elsewhere
    judged = [t for t in data["targets"] if "CUDA test" not in t["target"] and "live chat" not in t["target"]]
    assert all(t["met"] in (True, False) for t in judged), judged
    md = (tmp_path / "gpu.md").read_text()
    assert "| target | wanted | measured | met |" in md and "dry run" in md
