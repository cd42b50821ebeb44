"""Many processes, one store (docs/storage.md): 4 worker processes create the store at the same
moment and capture sessions into it, locally and on moto's S3 server. No session is lost, none is
corrupted (each equals a clean capture of its prompt), and a running viewer lists new sessions as
they appear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pytest

import llmri

pytestmark = pytest.mark.slow

WORKERS, PER_WORKER = 4, 3

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import llmri
    from llmri.backends.synthetic import SyntheticModel

    url, w, start, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    model, PER_WORKER = SyntheticModel(), int(sys.argv[5])
    print("ready", flush=True)
    while not os.path.exists(start):  # all workers create the store and their sessions at once
        time.sleep(0.005)
    for j in range(PER_WORKER):
        if j == 1:  # the first session of every worker is in: wait while the test looks
            print("first", flush=True)
            while not os.path.exists(go):
                time.sleep(0.01)
        s = llmri.capture(model, f"worker {w} prompt {j}", max_new_tokens=6, store=url)
        print("sid", j, s.id, flush=True)
    """
)


def _listed(server) -> list[str]:
    with urllib.request.urlopen(server.url + "api/sessions", timeout=20) as r:
        return sorted(x["id"].split("/")[-1] for x in json.loads(r.read())["sessions"])


def _expect(procs, word):
    for p in procs:
        line = p.stdout.readline()
        assert line.startswith(word), (line, p.stderr.read() if p.poll() is not None else "")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_four_workers_one_store(where, tmp_path, request, synthetic_model):
    if where == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/many.zarr"
    else:
        url = str(tmp_path / "many.zarr")
    script, start, go = tmp_path / "worker.py", tmp_path / "start", tmp_path / "go"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(w), str(start), str(go), str(PER_WORKER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(WORKERS)
    ]
    try:
        _expect(procs, "ready")
        start.touch()
        made: dict[tuple[int, int], str] = {}
        for w, p in enumerate(procs):
            made[w, 0] = p.stdout.readline().split()[2]
        _expect(procs, "first")
        with llmri.view([url], port=0, open_browser=False, block=False) as server:
            assert _listed(server) == sorted(made.values())  # one per worker so far
            go.touch()
            for w, p in enumerate(procs):
                for j in range(1, PER_WORKER):
                    line = p.stdout.readline()
                    assert line.startswith(f"sid {j}"), (line, p.stderr.read() if p.poll() is not None else "")
                    made[w, j] = line.split()[2]
            for p in procs:
                assert p.wait(timeout=120) == 0, p.stderr.read()
            # the same server, not restarted: it lists what the workers added since
            assert _listed(server) == sorted(made.values())
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    assert len(set(made.values())) == WORKERS * PER_WORKER  # no id shared, no session lost
    store = llmri.open_store(url)
    assert store.problems == [] and sorted(store.session_ids()) == sorted(made.values())
    for (w, j), sid in made.items():
        s = store.session(sid)
        ref = llmri.capture(synthetic_model, f"worker {w} prompt {j}", max_new_tokens=6)
        assert s.status == "complete" and s.meta["prompt"] == f"worker {w} prompt {j}"
        assert len(s) == len(ref)
        for sig in ref.signals:
            np.testing.assert_array_equal(s.frames(sig), ref.frames(sig))
        np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids)
