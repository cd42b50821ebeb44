"""Crash consistency on S3 (docs/FORMAT.md, "The commit point"): SIGKILL a process capturing into an
``s3://`` store on moto's real S3 server, at random moments, mid-commit included. After every kill
the store opens with no problem, the killed session reads ``interrupted`` (or ``complete``, whole),
and every committed frame equals a clean capture's. The local-store version of this test is
tests/capture/test_crash.py."""

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
    from llmri.backends.synthetic import SyntheticModel

    url, max_new, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    st = llmri.stream(SyntheticModel(), "Why is the sky blue?", chat=True, store=url,
                      max_new_tokens=max_new, ignore_eos=True)
    st.writer.commit_every = every  # many small commits: kills land inside them
    for i, frame in enumerate(st):
        if i == 0:
            print("started", st.session_id, flush=True)
    print("done", flush=True)
    """
)


def test_sigkill_capture_into_s3(s3_bucket, tmp_path, synthetic_model):
    url = f"s3://{s3_bucket}/crash.zarr"
    llmri.open_store(url, create=True)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(int(os.environ.get("LLMRI_CRASH_SEED", "4321")))
    ref = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=3000, ignore_eos=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    counts, before = [], set()
    for _ in range(int(os.environ.get("LLMRI_CRASH_RUNS", "6"))):
        every = rng.choice([1, 4, 16])
        proc = subprocess.Popen(
            [sys.executable, str(script), url, "3000", str(every)], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("started"), line
            sid = line.split()[1]
            time.sleep(rng.uniform(0.2, 3.0))
            assert proc.poll() is None  # 3000 tokens at a commit every <= 16 frames outlast the wait
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        store = ZarrFrameStore(url)  # the store opens
        sessions = store.sessions()
        assert store.problems == []
        new = [s for s in sessions if s.id not in before]
        assert [s.id for s in new] == [sid]
        s = new[0]
        assert s.status == "interrupted" and "is gone" in s.meta["interrupted_reason"], s.meta
        n = len(s)
        counts.append(n)
        for sig in ref.signals:
            np.testing.assert_array_equal(s.frames(sig), ref.frames(sig)[:n])
            np.testing.assert_array_equal(s.stats(sig)[0], ref.stats(sig)[0][:n])
        np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids[:n])
        assert s.tokens.text == ref.tokens.text[:n]
        before = {x.id for x in sessions}
    assert sum(n > 0 for n in counts) >= len(counts) // 2, counts
    assert len(set(counts)) >= 3, counts  # killed at different moments
    # the store still takes sessions, and a clean one completes
    done = llmri.capture(synthetic_model, "after the crashes", max_new_tokens=5, store=url)
    assert llmri.open_store(url).session(done.id).status == "complete"
