"""The study's running statistics against numpy over the same norms: Welford's running moments,
Chan's merge of two workers' parts, the histogram's quantiles; stored and read back."""

from __future__ import annotations

import numpy as np
import pytest

from llmri.study import RunningStats, save_stats, study_stats
from llmri.study.stats import BINS, LOG_HI, LOG_LO


@pytest.fixture
def norms():
    rng = np.random.default_rng(0)
    return {s: rng.lognormal(mean=2 + i, sigma=0.7, size=(500, 4)) for i, s in enumerate(["resid", "mlp"])}


def _fill(norms, parts):
    st = RunningStats(["resid", "mlp"], 4)
    for s, x in norms.items():
        for chunk in np.array_split(x, parts):
            st.add(s, chunk)
    return st


def test_moments_match_numpy(norms):
    st = _fill(norms, 37)
    for i, (_s, x) in enumerate(norms.items()):
        assert st.count[i].tolist() == [500] * 4
        np.testing.assert_allclose(st.mean[i], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(st.variance[i], x.var(0), rtol=1e-10)


def test_merge_of_parts_equals_one_pass(norms):
    a, b = RunningStats(["resid", "mlp"], 4), RunningStats(["resid", "mlp"], 4)
    for s, x in norms.items():
        a.add(s, x[:123])
        b.add(s, x[123:])
    whole = _fill(norms, 1)
    m = a.merged(b)
    np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, whole.m2, rtol=1e-10)
    assert (m.hist == whole.hist).all() and (m.count == whole.count).all()


def test_quantiles_within_a_bin(norms):
    st = _fill(norms, 3)
    half = 10 ** ((LOG_HI - LOG_LO) / BINS / 2)  # half a bin, as a ratio: the bin's middle to its edges
    for q in (0.01, 0.5, 0.99):
        k = int(np.ceil(q * 500))  # the k-th smallest norm is the q quantile (no interpolation)
        got, want = st.quantile(q), np.stack([np.sort(x, 0)[k - 1] for x in norms.values()])
        assert (np.maximum(got / want, want / got) <= half * (1 + 1e-9)).all()


def test_stored_parts_merge_when_read(tmp_path, norms):
    import llmri

    fs = llmri.open_store(str(tmp_path / "s.zarr"), create=True)
    a, b = RunningStats(["resid", "mlp"], 4), RunningStats(["resid", "mlp"], 4)
    for s, x in norms.items():
        a.add(s, x[:200])
        b.add(s, x[200:])
    save_stats(fs, a)
    save_stats(fs, b)
    got = study_stats(str(tmp_path / "s.zarr"))
    np.testing.assert_allclose(got.mean, _fill(norms, 1).mean, rtol=1e-12)
    assert fs.session_ids() == []  # the statistics are beside the sessions, not one of them
    assert study_stats(llmri.MemoryFrameStore()) is None
