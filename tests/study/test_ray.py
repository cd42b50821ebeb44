"""capture_many on a real local Ray cluster (started on loopback by the test, 2 CPUs): one actor per
worker holding the model, batches written to one store; a worker killed mid-study (ray.kill) costs
nothing: every prompt ends with exactly one complete session, equal to a local capture's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import llmri
from llmri.backends.synthetic import SyntheticModel
from llmri.settings import CaptureSettings

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

PROMPTS = [{"prompt": f"Question {i}: why is {i} a number?", "id": f"q{i}", "topic": f"t{i % 3}"} for i in range(20)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _complete_by_prompt(url):
    store = llmri.open_store(url)
    out: dict[str, list] = {}
    for s in store.sessions():
        if s.status == "complete" and "study" in s.meta:
            out.setdefault(s.meta["study"]["id"], []).append(s)
    return out


def _same_as_local(sessions, model):
    for pid, (s,) in sessions.items():
        text = next(p["prompt"] for p in PROMPTS if p["id"] == pid)
        ref = llmri.capture(model, text, max_new_tokens=5)
        np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids)
        np.testing.assert_array_equal(s.frames("resid"), ref.frames("resid"))


def test_executor_ray_captures_every_prompt_once(ray_cluster, tmp_path):
    url = str(tmp_path / "study.zarr")
    report = llmri.capture_many(
        SyntheticModel(), PROMPTS[:8], store=url, batch_size=2, executor="ray", max_new_tokens=5
    )
    assert report.captured == 8 and report.skipped == 0
    got = _complete_by_prompt(url)
    assert sorted(got) == sorted(p["id"] for p in PROMPTS[:8]) and all(len(v) == 1 for v in got.values())
    _same_as_local(got, SyntheticModel())
    # resumed: nothing left to do
    again = llmri.capture_many(SyntheticModel(), PROMPTS[:8], store=url, batch_size=2, executor="ray")
    assert again.captured == 0 and again.skipped == 8


def test_a_worker_killed_mid_study(ray_cluster, tmp_path):
    from ray.util import ActorPool

    from llmri.study.ray import make_workers

    url = str(tmp_path / "killed.zarr")
    llmri.open_store(url, create=True)
    five = CaptureSettings().replace(max_new_tokens=5)
    workers = make_workers(2, SyntheticModel(), store=url, batch_size=2, settings=five)
    ray.get([w.ping.remote() for w in workers])  # both up, the model held
    victim = workers[0]
    killed = threading.Event()

    def kill_when_started():
        store = llmri.open_store(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(store.session_ids()) < 2:
            time.sleep(0.02)
        ray.kill(victim)  # no restart: the worker is gone for good
        killed.set()

    t = threading.Thread(target=kill_when_started)
    t.start()
    pool = ActorPool(workers)
    with pytest.raises(llmri.CaptureError, match="make_workers"):  # options a pool would not use
        llmri.capture_many(SyntheticModel(), PROMPTS, store=url, executor=pool, max_new_tokens=5)
    report = llmri.capture_many(SyntheticModel(), PROMPTS, store=url, batch_size=2, executor=pool)
    t.join()
    assert killed.is_set()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.ping.remote())
    got = _complete_by_prompt(url)
    assert sorted(got) == sorted(p["id"] for p in PROMPTS)  # every prompt ...
    assert all(len(v) == 1 for v in got.values())  # ... exactly once
    assert report.captured + report.skipped >= len(PROMPTS) - 2  # a batch may have been half done
    _same_as_local(got, SyntheticModel())
    assert pool.has_free()  # the survivor went back to the user's pool
    assert got["q4"][0].meta["study"]["metadata"] == {"topic": "t1"}
