"""Directions from contrasting prompts: each method against an independent reference (hand-written
hooks on the bundled model's blocks; scikit-learn's TruncatedSVD and LogisticRegression), saved and
loaded as GGUF control vectors (llama.cpp's / repeng's layout) and safetensors, and used by steer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import llmri
from helpers import tiny_model
from llmri._errors import CaptureError
from llmri.interventions import Direction, direction, load_direction
from llmri.interventions.direction import from_activations

POS = ["The capital of France is Paris", "I love Paris in spring", "Paris, the city of lights"]
NEG = ["The capital of Italy is Rome", "I love Rome in spring", "Rome, the eternal city"]


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _last_outputs(model, texts, layers):
    """Each text's last-position output of the listed blocks, from forward hooks written here."""
    seen: dict[int, torch.Tensor] = {}
    blocks = model.model.model.layers
    handles = [
        blocks[la].register_forward_hook(
            lambda _m, _a, out, la=la: seen.__setitem__(la, (out[0] if isinstance(out, tuple) else out)[0, -1].float())
        )
        for la in layers
    ]
    rows = []
    try:
        for t in texts:
            with torch.no_grad():
                model.model(torch.tensor([model.tokenizer(t)["input_ids"]]))
            rows.append(np.stack([seen[la].numpy() for la in layers]))
    finally:
        for h in handles:
            h.remove()
    return np.stack(rows).astype(np.float64)


@pytest.mark.slow
def test_mean_diff_on_the_bundled_model_matches_hand_written_hooks(real_model):
    layers = [3, 12, 29]
    d = direction(real_model, POS, NEG, layers=layers)
    ref = _last_outputs(real_model, POS, layers).mean(0) - _last_outputs(real_model, NEG, layers).mean(0)
    assert d.layers == (3, 12, 29) and d.array().shape == (3, 576)
    np.testing.assert_allclose(d.array(), ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
    assert d.model == real_model.fingerprint
    assert d.provenance["method"] == "mean_diff" and d.provenance["signal"] == "resid"
    assert d.provenance["model_hint"] == "llama" and len(d.provenance["prompts"]) == 16
    # the probe separates the prompts it was trained on; PCA points from the negatives to the positives
    p12, n12 = _last_outputs(real_model, POS, [12])[:, 0], _last_outputs(real_model, NEG, [12])[:, 0]
    for method in ("pca", "logistic"):
        other = direction(real_model, POS, NEG, layers=[12], method=method)
        assert other.provenance["method"] == method
        v = other.array()[0]
        if method == "logistic":
            assert (p12 @ v).min() > (n12 @ v).max()
        assert float((p12 - n12).mean(0) @ v) > 0, method
        assert _cos(other.array()[0], d.array()[1]) > 0.3, method
        # scaled to the means' distance along itself
        u = other.array()[0] / np.linalg.norm(other.array()[0])
        assert np.linalg.norm(other.array()[0]) == pytest.approx(float(ref[1] @ u), rel=1e-3)


def _blobs(seed=0, n=12, d=24):
    rng = np.random.default_rng(seed)
    shift = rng.normal(size=d)
    pos = rng.normal(size=(n, 2, d)) + shift
    neg = rng.normal(size=(n, 2, d)) - 0.3 * shift
    return pos, neg


def test_pca_is_the_first_singular_vector_of_the_paired_differences():
    from sklearn.decomposition import TruncatedSVD

    pos, neg = _blobs()
    d = from_activations(pos, neg, [1, 2], "pca")
    for k in range(2):
        ref = TruncatedSVD(n_components=1, algorithm="arpack").fit(pos[:, k] - neg[:, k]).components_[0]
        assert abs(_cos(d.array()[k], ref)) > 1 - 1e-6
        assert float((pos[:, k].mean(0) - neg[:, k].mean(0)) @ d.array()[k]) > 0  # towards the positives


def test_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    pos, neg = _blobs(1)
    d = from_activations(pos, neg, [4, 5], "logistic")
    for k in range(2):
        x = np.concatenate([pos[:, k], neg[:, k]])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y).coef_[0]
        assert _cos(d.array()[k], ref) > 1 - 1e-6


def test_bad_input_is_one_line():
    pos, neg = _blobs()
    with pytest.raises(CaptureError, match="unknown method 'svd'"):
        from_activations(pos, neg, [0, 1], "svd")
    with pytest.raises(CaptureError, match="pairs the prompts"):
        from_activations(pos, neg[:3], [0, 1], "pca")
    with pytest.raises(CaptureError, match="positive must be a non-empty list"):
        direction(None, "Paris", NEG)
    d = from_activations(pos, neg, [1, 2], "mean_diff")
    with pytest.raises(CaptureError, match="no vector for layer 7"):
        llmri.steer(d, layers=7)
    with pytest.raises(CaptureError, match="layers is needed"):
        llmri.steer(np.ones(4))


def _same(a: Direction, b: Direction) -> None:
    assert a.layers == b.layers and a.model == b.model
    np.testing.assert_array_equal(a.array(), b.array())
    assert dict(a.provenance) == dict(b.provenance)


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors"])
def test_save_and_load_round_trip(tmp_path, suffix):
    pos, neg = _blobs()
    prov = {"signal": "resid", "model_hint": "llama"}
    d = from_activations(pos, neg, [3, 9], "mean_diff", model="abc123", provenance=prov)
    back = load_direction(d.save(tmp_path / f"d{suffix}"))
    _same(d, back)


def test_the_gguf_is_llama_cpps_control_vector_layout(tmp_path):
    """Read back with gguf's own reader (the package llama.cpp ships): the keys and tensors its
    common_control_vector_load_one and repeng's import_gguf read."""
    import gguf

    pos, neg = _blobs()
    d = from_activations(pos, neg, [3, 9], "mean_diff", provenance={"model_hint": "llama"})
    r = gguf.GGUFReader(str(d.save(tmp_path / "d.gguf")))
    assert r.get_field("general.architecture").contents() == "controlvector"
    assert r.get_field("controlvector.model_hint").contents() == "llama"
    assert r.get_field("controlvector.layer_count").contents() == 2
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == ["direction.3", "direction.9"]
    for k, name in enumerate(["direction.3", "direction.9"]):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(tensors[name].data), d.array()[k])
    with pytest.raises(CaptureError, match="cannot hold layer 0"):
        from_activations(pos, neg, [0, 1], "mean_diff").save(tmp_path / "zero.gguf")


def test_a_repeng_style_file_loads_for_any_model(tmp_path):
    """What repeng's export_gguf writes (no llmri keys): no fingerprint, the hint kept."""
    import gguf

    rows = {5: np.arange(8, dtype=np.float32), 6: -np.ones(8, dtype=np.float32)}
    w = gguf.GGUFWriter(str(tmp_path / "r.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    w.add_int32("controlvector.layer_count", 2)
    for layer, v in rows.items():
        w.add_tensor(f"direction.{layer}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    d = load_direction(tmp_path / "r.gguf")
    assert d.layers == (5, 6) and d.model is None and d.provenance["model_hint"] == "mistral"
    np.testing.assert_array_equal(d.at(6)[0], rows[6])
    for bad, match in ((tmp_path / "x.npy", "saved as .gguf or .safetensors"), (tmp_path / "no.gguf", "no such file")):
        with pytest.raises(CaptureError, match=match):
            load_direction(bad)


def test_steer_takes_a_direction_and_refuses_one_from_another_model():
    tiny = tiny_model(0)
    other = dataclasses.replace(tiny_model(1), fingerprint="tiny-other")
    d = direction(tiny, ["hello there"], ["goodbye now"], layers=[1, 2])
    rec = llmri.steer(d, scale=2.0, positions="all")
    assert rec.layers == (1, 2) and rec.model == tiny.fingerprint
    np.testing.assert_array_equal(rec.direction.array(), d.array())
    one = llmri.steer(d, layers=2)
    np.testing.assert_array_equal(one.direction.array(), d.array()[1:])
    opts = {"max_new_tokens": 2, "backend": "hf", "reducer": "neurons", "frame_dtype": "float32"}
    s = llmri.capture(tiny, "hello", interventions=[rec], **opts)
    assert s.meta["interventions"][0]["model"] == tiny.fingerprint
    assert llmri.interventions.from_meta(s.meta)[0] == rec
    with pytest.raises(CaptureError, match="made on another model") as e:
        llmri.capture(other, "hello", interventions=[rec], **opts)
    assert "\n" not in str(e.value)
    # unbound: the check dropped, the same vectors steer the other model
    s2 = llmri.capture(other, "hello", interventions=[llmri.steer(d.unbound(), scale=2.0)], **opts)
    assert "model" not in s2.meta["interventions"][0]
