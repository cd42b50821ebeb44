"""capture_many on the synthetic backend (no model): rows pulled lazily, resume by key, the
memory store, statistics stored per run and merged."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri.study import GROUP_WINDOW, capture_batches, capture_many, read_prompts, study_stats


@pytest.fixture(scope="module")
def fake():
    from llmri.backends.synthetic import SyntheticModel

    return SyntheticModel()


def test_rows_are_pulled_a_window_at_a_time(fake):
    pulled = []

    def rows():
        for i in range(40):
            pulled.append(i)
            yield {"prompt": f"p {i}", "id": i}

    firsts = []
    store = llmri.MemoryFrameStore()
    capture_batches(
        fake, read_prompts(rows()), store, llmri.settings.CaptureSettings(max_new_tokens=2), batch_size=2,
        on_session=lambda *_: firsts.append(len(pulled)),
    )  # fmt: skip
    # the first session is written before more than one window of rows was read: memory follows
    # the batch size, not the number of prompts
    assert firsts[0] <= 2 * GROUP_WINDOW < 40
    assert len(firsts) == 40 and len(store.session_ids()) == 40


def test_resume_by_id_and_by_content(fake, tmp_path):
    path = str(tmp_path / "s.zarr")
    rows = [{"prompt": "a", "id": "x"}, {"prompt": "b"}, "c"]
    first = capture_many(fake, rows[:2], store=path, max_new_tokens=3)
    assert (first.captured, first.skipped) == (2, 0)
    again = capture_many(fake, rows, store=path, max_new_tokens=3)
    assert (again.captured, again.skipped) == (1, 2)
    other = capture_many(fake, rows, store=path, max_new_tokens=4)  # other settings: hashed rows again
    assert (other.captured, other.skipped) == (2, 1)
    store = llmri.open_store(path)
    assert len(store.session_ids()) == 5
    keys = [store.session(s).meta["study"]["key"] for s in store.session_ids()]
    assert keys.count("id:x") == 1 and len(set(keys)) == 5
    # three runs, three parts, merged when read: the same as recomputed from the sessions
    got, want = study_stats(path), study_stats(path, recompute=True)
    assert (got.count == want.count).all() and got.count.sum() > 0
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9)


def test_bad_batch_size_and_executor(fake):
    with pytest.raises(llmri.CaptureError, match="batch_size must be a whole number >= 1"):
        capture_many(fake, ["a"], store=llmri.MemoryFrameStore(), batch_size=0)
    with pytest.raises(llmri.CaptureError, match="executor must be None, 'local', 'ray'"):
        capture_many(fake, ["a"], store=llmri.MemoryFrameStore(), executor="nope")
