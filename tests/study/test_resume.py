"""A study killed mid-run (SIGKILL, and Ctrl-C's SIGINT) and run again: every prompt exactly once,
every session complete. Real subprocesses of ``python -m llmri capture --prompts``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import llmri

pytestmark = pytest.mark.slow

N, BATCH = 12, 4


def _complete(path):
    if not os.path.exists(os.path.join(path, "zarr.json")):
        return []
    store = llmri.open_store(path)
    out = []
    for sid in store.session_ids():
        try:
            meta = store.session(sid).meta
        except llmri.StoreError:
            continue
        if meta.get("status") == "complete":
            out.append(meta)
    return out


def _cmd(prompts, path):
    # ignore EOS: the rows of a batch end at the same step, so their sessions are written together
    return [sys.executable, "-m", "llmri", "capture", "--prompts", str(prompts), "-o", path, "--batch-size",
            str(BATCH), "--max-new-tokens", "4", "--ignore-eos", "--signals", "resid", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_killed_study_resumes_to_every_prompt_once(tmp_path, sig):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": "Count to " + "ten " * (1 + i % 5)}) + "\n" for i in range(N))
    )
    path = str(tmp_path / "study.zarr")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(_cmd(prompts, path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while len(_complete(path)) < BATCH:  # the first batch is written: kill during the second
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 130)
    if sig == signal.SIGINT:
        assert "the complete sessions are kept" in err and "Traceback" not in err
    kept = _complete(path)
    assert BATCH <= len(kept) < N  # at most the unfinished rows were lost
    rerun = subprocess.run(_cmd(prompts, path), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"{N - len(kept)} captured, {len(kept)} already complete")
    store = llmri.open_store(path)
    metas = [store.session(s).meta for s in store.session_ids()]
    assert all(m["status"] == "complete" for m in metas)
    assert sorted(m["study"]["id"] for m in metas) == sorted(f"q{i}" for i in range(N))
