"""Crash consistency for real: SIGKILL a process that is capturing into a Zarr store, at random moments.

After every kill the store must open, the killed session must read ``interrupted`` (or
``complete`` with every frame, when the kill came after its final commit), and every committed
frame must equal what a clean run of the same settings produces.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import llmri
from llmri.store.zarr import ZarrFrameStore

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent(
    """
    import sys
    import llmri

    path, which, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if which == "synthetic":
        from llmri.backends.synthetic import SyntheticModel

        model, kw = SyntheticModel(), {"max_new_tokens": max_new, "ignore_eos": True}
    else:
        model, kw = llmri.load_model(), {"max_new_tokens": 2000, "ignore_eos": True}
    st = llmri.stream(model, "Why is the sky blue?", chat=True, store=path, **kw)
    if len(sys.argv) > 4:  # a smaller commit batch: many distinct committed lengths to read
        st.writer.commit_every = int(sys.argv[4])
    for i, frame in enumerate(st):
        if i == 0:
            print("started", st.session_id, flush=True)  # frames are flowing
    print("done", flush=True)
    """
)


def _kill_at_random(script, path, which, rng, *, ready_timeout, max_new=4000):
    """Start a capture, SIGKILL it at a random moment; returns the session id (None if killed
    before frames flowed) and whether the capture had already finished by itself."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), which, str(max_new)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    finished = False
    sid = None
    t0 = time.monotonic()
    try:
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.0, 1.5))  # any moment from process start: store/session creation too
        else:
            line = proc.stdout.readline()
            assert line.startswith("started"), (line, proc.stderr.read() if proc.poll() is not None else "")
            sid = line.split()[1]
            time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        else:  # a short capture may end first: then it must have ended cleanly
            assert proc.returncode == 0, proc.stderr.read()
            finished = True
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < ready_timeout
    # a short capture can also end by itself between the poll and the kill: then it ended cleanly
    finished = finished or proc.returncode == 0
    assert finished or proc.returncode == -signal.SIGKILL, proc.returncode
    return sid, finished


def _check(path, before, sid, reference, committed, total=None):
    """``total``: the frame count of the whole capture (a kill during close may leave it complete)."""
    store = ZarrFrameStore(str(path))  # the store opens
    sessions = store.sessions()
    assert store.problems == []
    new = [s for s in sessions if s.id not in before]
    assert len(new) <= 1
    if sid is not None:
        assert [s.id for s in new] == [sid]
    for s in new:
        n = len(s)
        if s.status == "complete":
            assert n == total, (n, total)  # killed after its last commit, or finished: whole
        else:
            assert s.status == "interrupted", s.meta
            assert "is gone" in s.meta["interrupted_reason"]
        committed.append((s.id, n))
        if n == 0:
            assert s.frames("resid").shape[0] == 0 and len(s.tokens) == 0
            continue
        ref = reference(n)
        for sig in ref.signals:
            np.testing.assert_array_equal(s.frames(sig), ref.frames(sig)[:n])
            np.testing.assert_array_equal(s.stats(sig)[0], ref.stats(sig)[0][:n])
            np.testing.assert_array_equal(s.stats(sig)[1], ref.stats(sig)[1][:n])
        np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids[:n])
        assert s.tokens.text == ref.tokens.text[:n]
        np.testing.assert_array_equal(s.tokens.top_ids, ref.tokens.top_ids[:n])
        # a range inside the committed part reads alone, too
        a = n // 2
        np.testing.assert_array_equal(s.frames("mlp", a, n), ref.frames("mlp")[a:n])
    return {s.id for s in sessions}


class _Reference:
    """A clean capture of the same settings, grown on demand (greedy: a longer run extends a shorter one)."""

    def __init__(self, model):
        self.model = model
        self.session = None

    def __call__(self, n):
        if self.session is None or len(self.session) < n:
            self.session = llmri.capture(
                self.model, "Why is the sky blue?", chat=True, max_new_tokens=n + 16, ignore_eos=True
            )
        return self.session


def test_sigkill_synthetic_capture_20_times(tmp_path, synthetic_model):
    path = tmp_path / "crash.zarr"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(int(os.environ.get("LLMRI_CRASH_SEED", "1234")))
    reference = _Reference(synthetic_model)
    committed: list[tuple[str, int]] = []
    seen: set[str] = set()
    prompt_len = sum(r == "prompt" for r in reference(1).tokens.role)
    kills = 0
    target = int(os.environ.get("LLMRI_CRASH_RUNS", "20"))  # raise it for a stress run
    for _ in range(3 * target):  # short captures may finish before their kill: go on until `target` kills
        if kills >= target:
            break
        # mostly long captures killed mid-way; some short ones, so kills also land while closing
        max_new = rng.randint(10, 120) if rng.random() < 0.3 else 4000
        sid, finished = _kill_at_random(script, path, "synthetic", rng, ready_timeout=120, max_new=max_new)
        kills += not finished
        if not path.exists():
            continue  # killed before the store existed: nothing to check
        seen = _check(path, seen, sid, reference, committed, total=prompt_len + max_new)
    assert kills >= max(20, target)
    counts = [n for _, n in committed]
    assert len(counts) >= 15, counts
    assert sum(n > 0 for n in counts) >= 10, counts  # most kills hit a capture with committed frames
    assert len(set(counts)) >= 4, counts  # at different moments (commits come in batches of 16)
    # the store still takes new sessions, and a clean one completes
    s = llmri.capture(synthetic_model, "after the crashes", max_new_tokens=5, store=path)
    assert llmri.open_store(path).session(s.id).status == "complete"


def test_sigkill_real_model_capture(tmp_path, real_model):
    path = tmp_path / "crash-real.zarr"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(99)
    reference = _Reference(real_model)
    committed: list[tuple[str, int]] = []
    seen: set[str] = set()
    for _ in range(3):
        proc_sid, finished = _kill_at_random(script, path, "real", _AfterStart(rng, 1.0, 5.0), ready_timeout=300)
        assert not finished
        seen = _check(path, seen, proc_sid, reference, committed)
    assert all(n > 0 for _, n in committed), committed


class _AfterStart:
    """A random source that always waits for the capture to start, then kills within [lo, hi] seconds."""

    def __init__(self, rng, lo, hi):
        self.rng, self.lo, self.hi = rng, lo, hi

    def random(self):
        return 1.0

    def uniform(self, a, b):
        return self.rng.uniform(self.lo, self.hi)


def test_a_live_reader_sees_only_committed_frames(tmp_path, synthetic_model):
    """Read a session over and over while another process writes it: every read is a clean prefix."""
    path = tmp_path / "live.zarr"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference = _Reference(synthetic_model)
    reference(400)  # computed up front, so the reads below keep pace with the writer
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), "synthetic", "4000", "16"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("started"), line
        sid = line.split()[1]
        seen = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and len(set(seen)) < 5:
            s = ZarrFrameStore(str(path)).session(sid)
            n = len(s)
            assert s.status == "recording"
            frames = s.frames("resid")
            assert frames.shape[0] == n and not np.isnan(frames).any()  # never a frame of fill values
            if n:
                np.testing.assert_array_equal(frames, reference(n).frames("resid")[:n])
                assert s.tokens.text == reference(n).tokens.text[:n]
            seen.append(n)
        assert proc.poll() is None
        assert seen == sorted(seen) and len(set(seen)) >= 5, seen  # it grew while we read
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert ZarrFrameStore(str(path)).session(sid).status == "interrupted"
