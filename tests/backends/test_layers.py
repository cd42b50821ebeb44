"""``layers=``: chosen layers only (LayerSubset), against the full capture's same layers."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri.capture.precision import difference_tolerance
from llmri.settings import CaptureSettings, check_layers


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("0-2,10", (0, 1, 2, 10)),
        ("-1", (-1,)),
        ("3, 1,3", (3, 1)),
        (range(2, 5), (2, 3, 4)),
        ([5, 0], (5, 0)),
        (None, None),
    ],
)
def test_layers_parse(given, want):
    assert check_layers(given) == want
    assert CaptureSettings(layers=given).layers == want


@pytest.mark.parametrize("bad", ["a-b", "", [], [1.5], [True], 3])
def test_bad_layers_one_line(bad):
    with pytest.raises(llmri.CaptureError) as e:
        CaptureSettings(layers=bad)
    assert "\n" not in str(e.value) and "layers" in str(e.value)


def test_subset_equals_the_full_capture_at_those_layers(synthetic_model):
    full = llmri.capture(synthetic_model, "hello there", max_new_tokens=3)
    sub = llmri.capture(synthetic_model, "hello there", max_new_tokens=3, layers=[2, 0, -1])
    n = len(full.layers)
    idx = [2, 0, n - 1]
    assert sub.meta["layer_indices"] == idx and sub.layers == [full.layers[i] for i in idx]
    for s in full.signals:
        # the same values; the reducer's matmul over fewer layers may round one float16 step apart
        a, b = sub.frames(s).astype(np.float64), full.frames(s)[:, idx].astype(np.float64)
        assert (np.abs(a - b) <= difference_tolerance("float16", a, b) + 1e-6).all()
        np.testing.assert_allclose(sub.norms(s), full.norms(s)[:, idx], rtol=1e-6)
    with pytest.raises(llmri.CaptureError, match=f"layers: {n} is out of range"):
        llmri.capture(synthetic_model, "x", max_new_tokens=1, layers=[n])
