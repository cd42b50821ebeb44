"""Feature spikes (``llmri.readouts.sae.spikes``, the ``feature_spike`` markers) on arrays built by hand:
"usual" is a feature's own median over the session's tokens where it is among the stored top-k."""

from __future__ import annotations

import numpy as np

from llmri.readouts import THRESHOLDS, find_markers
from llmri.readouts.sae.spikes import feature_spikes


def _arrays(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Feature 3 at every token near 1.0, feature 7 at every other token near 0.5; -1 / NaN padding."""
    rng = np.random.default_rng(0)
    ids = np.full((n, 4), -1, np.int32)
    vals = np.full((n, 4), np.nan, np.float32)
    ids[:, 0], vals[:, 0] = 3, 1.0 + 0.05 * rng.standard_normal(n)
    ids[::2, 1], vals[::2, 1] = 7, 0.5 + 0.02 * rng.standard_normal(len(range(0, n, 2)))
    return ids, vals


def test_a_feature_far_above_its_own_median_is_a_spike():
    ids, vals = _arrays()
    vals[17, 0] = 4.0
    vals[0, 0] = 100.0  # position 0: neither tested nor part of the median
    ids[9, 2], vals[9, 2] = 11, 50.0  # fires once: no "usual" to be above
    spikes = feature_spikes(ids, vals)
    assert [(s.token, s.feature, s.others) for s in spikes] == [(17, 3, 0)]
    s = spikes[0]
    assert s.value == np.float32(4.0) and s.fires == 29 and abs(s.median - 1.0) < 0.05 and s.z > 5


def test_one_marker_per_token_its_strongest_feature_and_the_others_counted():
    ids, vals = _arrays()
    vals[20, 0] = 3.0
    vals[20, 1] = 5.0  # feature 7 at token 20 (an even token): ten times its median
    (s,) = feature_spikes(ids, vals)
    assert (s.token, s.feature, s.others) == (20, 7, 1)


def test_a_low_value_and_the_cap_on_tokens():
    ids, vals = _arrays()
    vals[5, 0] = 0.1  # far below: not a spike
    assert feature_spikes(ids, vals) == []
    for t in (3, 9, 13, 21):
        vals[t, 0] = 3.0 + t / 10
    kept = feature_spikes(ids, vals, max_tokens=0.1)  # ceil(3.0) = 3 of the 4, the strongest
    assert sorted(s.token for s in kept) == [9, 13, 21]


def test_markers_name_the_sae_feature_and_label():
    ids, vals = _arrays()
    vals[17, 0] = 4.0

    class Feats:
        record = {"layer": 6, "signal": "resid"}
        labels = {3: "the colour blue"}

        def __init__(self):
            self.ids, self.values = ids, vals

        def label(self, f):
            return self.labels.get(int(f), "")

    texts = [f"t{i}" for i in range(30)]
    (m,) = find_markers(features={"res6": Feats()}, texts=texts, thresholds=THRESHOLDS)
    assert (m.kind, m.token, m.layer, m.signal) == ("feature_spike", 17, 6, "resid")
    assert "SAE res6 feature 3 ('the colour blue') at 4" in m.reason and "token 17 't17'" in m.reason
