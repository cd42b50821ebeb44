"""Direction probes in a capture (``probes=[...]``): the stored cosine and projection against Hugging
Face's own ``output_hidden_states`` (and a hand-written hook on an MLP) dotted with the direction by
hand; probes change no token or frame; a steer of the same direction raises its projection by
``scale * |d|``; the Zarr arrays, ``to_xarray`` and ``llmri info``; every bad probe one line before
generation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri import CaptureError, StoreError  # noqa: E402
from llmri.settings import CaptureSettings  # noqa: E402

PROMPT = "The capital of France is"
RESID_LAYERS = (0, 3, 12, 28)


def random_direction(model, layers, *, seed: int, signal: str = "resid", name: str | None = None) -> llmri.Direction:
    rows = np.random.default_rng(seed).standard_normal((len(layers), 576)).astype(np.float32)
    d = llmri.Direction(rows, tuple(layers), model.fingerprint, {"method": "random", "signal": signal})
    return d.named(name) if name else d


@pytest.fixture(scope="module")
def directions(real_model) -> dict[str, llmri.Direction]:
    return {
        "rnd": random_direction(real_model, RESID_LAYERS, seed=0, name="rnd"),
        "mlp7": random_direction(real_model, (7,), seed=1, signal="mlp", name="mlp7"),
    }


@pytest.fixture(scope="module")
def captured(real_model, directions, tmp_path_factory):
    store = tmp_path_factory.mktemp("probe_store")
    s = llmri.capture(real_model, PROMPT, probes=list(directions.values()), max_new_tokens=5, store=str(store))
    return s, store


def _hf_vectors(model, ids: list[int]) -> dict[tuple[str, int], np.ndarray]:
    """float64 ``[T, d]`` per (signal, layer): resid from HF's output_hidden_states (``hidden_states[l + 1]``
    is block ``l``'s output), mlp 7 from a hook on ``layers[7].mlp``; one forward, no cache, on a copy."""
    ref = copy.deepcopy(model.model)
    got: dict[tuple[str, int], np.ndarray] = {}
    hook = ref.model.layers[7].mlp.register_forward_hook(
        lambda m, i, o: got.__setitem__(("mlp", 7), o[0].double().numpy())
    )
    try:
        with torch.inference_mode():
            out = ref(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    for layer in RESID_LAYERS:
        got["resid", layer] = out.hidden_states[layer + 1][0].double().numpy()
    return got


@pytest.mark.slow
def test_stored_projections_equal_a_hand_computation_on_hf_hidden_states(real_model, directions, captured) -> None:
    s, _ = captured
    vectors = _hf_vectors(real_model, s.tokens.ids.tolist())
    for name, d in directions.items():
        got = s.probe(name)
        assert got.cosine.dtype == np.float32 and got.projection.shape == (len(s), 30)
        unprobed = [k for k in range(30) if k not in d.layers]
        assert np.isnan(got.projection[:, unprobed]).all() and np.isnan(got.cosine[:, unprobed]).all()
        for k, layer in enumerate(d.layers):
            h = vectors[d.signal, layer]  # [T, d] float64
            v = d.array()[k].astype(np.float64)
            proj = h @ (v / np.linalg.norm(v))
            cos = proj / np.linalg.norm(h, axis=-1)
            err_p = np.abs(got.projection[:, layer] - proj) / np.maximum(np.linalg.norm(h, axis=-1), 1.0)
            err_c = np.abs(got.cosine[:, layer] - cos)
            print(f"{name} layer {layer}: |projection error| / |h| {err_p.max():.1e}, cosine error {err_c.max():.1e}")
            assert err_p.max() < 1e-5 and err_c.max() < 1e-5


@pytest.mark.slow
def test_probes_change_no_token_or_frame(real_model, directions, captured) -> None:
    s, _ = captured
    plain = llmri.capture(real_model, PROMPT, max_new_tokens=5)
    assert s.tokens.ids.tolist() == plain.tokens.ids.tolist()
    for signal in plain.signals:
        np.testing.assert_array_equal(s.frames(signal), plain.frames(signal))
        np.testing.assert_array_equal(s.norms(signal), plain.norms(signal))
    assert plain.probes == [] and "probes" not in plain.meta


@pytest.mark.slow
def test_a_steer_of_the_same_direction_raises_its_projection(real_model, directions) -> None:
    d = directions["rnd"].select([12])
    norm = float(np.linalg.norm(d.array()[0]))
    runs = {
        scale: llmri.capture(
            real_model, PROMPT, max_new_tokens=4, probes=[d],
            interventions=[llmri.steer(d, scale=scale, positions="all")],
        ).probe("rnd").projection[:, 12]
        for scale in (0.0, 2.0, 8.0)
    }  # fmt: skip
    n_prompt = len(real_model.tokenizer(PROMPT)["input_ids"])
    for scale in (2.0, 8.0):  # the prompt's positions: the same residual plus scale * d, exactly along d
        np.testing.assert_allclose(runs[scale][:n_prompt] - runs[0.0][:n_prompt], scale * norm, rtol=1e-4)
    means = [float(np.mean(runs[x])) for x in (0.0, 2.0, 8.0)]
    assert means[0] < means[1] < means[2]


@pytest.mark.slow
def test_the_session_records_each_probe_and_the_store_keeps_its_arrays(directions, captured) -> None:
    import zarr

    s, store = captured
    assert s.probes == ["rnd", "mlp7"]
    r0 = s.meta["probes"][0]
    d = directions["rnd"]
    assert (r0["name"], r0["signal"], r0["layers"], r0["d_model"], r0["model"]) == (
        "rnd",
        "resid",
        [0, 3, 12, 28],
        576,
        d.model,
    )
    assert r0["sha256"] == d.vectors.sha256() and r0["provenance"]["method"] == "random"
    np.testing.assert_allclose(r0["norms"], np.linalg.norm(d.array(), axis=-1), rtol=1e-6)
    assert llmri.interventions.Vector.from_dict(r0["vectors"]) == d.vectors  # the run can be rebuilt
    z = llmri.open_store(str(store)).session(s.id)
    assert z.probes == ["rnd", "mlp7"]
    for name in s.probes:
        a, b = s.probe(name), z.probe(name)
        np.testing.assert_array_equal(a.cosine, b.cosine)
        np.testing.assert_array_equal(a.projection, b.projection)
        assert b.record == a.record and b.layers == s.layers
    arr = zarr.open_array(str(Path(store) / "sessions" / s.id / "probes" / "rnd" / "projection"), mode="r")
    assert arr.metadata.dimension_names == ("token", "layer") and arr.dtype == np.float32
    sub = z.probe("rnd", 2, 4)
    assert len(sub) == 2 and np.array_equal(sub.projection, s.probe("rnd").projection[2:4], equal_nan=True)
    pytest.importorskip("xarray")
    for session in (s, z):
        ds = session.to_xarray()
        assert ds["probe_rnd_projection"].dims == ("token", "layer")
        got = ds["probe_mlp7_cosine"].sel(layer=s.layers[7]).values
        np.testing.assert_array_equal(got, s.probe("mlp7").cosine[:, 7])
    json.dumps(z.meta)
    with pytest.raises(StoreError, match="no probe 'x'") as e:
        z.probe("x")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_stream_and_a_layer_subset_record_the_layers_they_hold(real_model, directions, captured) -> None:
    s, _ = captured
    frames = list(llmri.stream(real_model, PROMPT, probes=[directions["rnd"]], max_new_tokens=5))
    np.testing.assert_array_equal(np.stack([f.probes["rnd"].projection for f in frames]), s.probe("rnd").projection)
    sub = llmri.capture(real_model, PROMPT, probes=[directions["rnd"]], layers="10-14", max_new_tokens=2)
    got = sub.probe("rnd").projection  # session layers 10..14: only 12 is the direction's
    assert got.shape == (len(sub), 5) and np.isnan(got[:, [0, 1, 3, 4]]).all()
    np.testing.assert_allclose(got[:, 2], s.probe("rnd").projection[: len(sub), 12], rtol=1e-5, atol=1e-4)


def _constant(
    width: int = 576, layer: int = 3, value: float = 1.0, model: str | None = None, **prov
) -> llmri.Direction:
    return llmri.Direction(np.full((1, width), value, np.float32), (layer,), model, prov)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "error"),
    [
        (_constant(width=64), "probe probe0: the direction has width 64, the model's d_model is 576"),
        (_constant(model="other-fp"), "probe probe0: the direction was made on another model"),
        (_constant(layer=30), "probe probe0: layer 30 is out of range"),
        (_constant(signal="attn"), "reads attn, which this capture does not record"),
        (_constant(value=0.0), "its vector at layer 3 is zero"),
    ],
)
def test_a_mismatched_probe_is_one_line_before_generation(real_model, tmp_path, probe, error) -> None:
    store = tmp_path / "s"
    with pytest.raises(CaptureError, match=error) as e:
        llmri.capture(real_model, "hi", probes=[probe], signals="resid,mlp", max_new_tokens=2, store=str(store))
    assert "\n" not in str(e.value)
    assert not store.exists()  # nothing was created


def test_bad_probe_options_are_one_line(tmp_path) -> None:
    d = llmri.Direction(np.ones((1, 8), np.float32), (1,))
    for bad, match in [
        (3, "probes must be a list of directions"),
        ([3], "int is not a direction"),
        ({"x": "a.gguf"}, "x is a str, not a Direction"),
    ]:
        with pytest.raises(CaptureError, match=match) as e:
            CaptureSettings(probes=bad)
        assert "\n" not in str(e.value)
    assert CaptureSettings(probes={"paris": d}).probes[0].name == "paris"
    assert CaptureSettings(probes=tmp_path / "v.npy").probes == (str(tmp_path / "v.npy"),)
    assert CaptureSettings(probes=[d]).to_dict()["probes"] == [{"name": None, "sha256": d.vectors.sha256()}]
    from llmri.capture.probes import read_probes

    assert [n for n, _ in read_probes((d, d))] == ["probe0", "probe1"]
    for probes, match in [
        ([d.named("a"), d.named("a")], "two probes named a"),
        ([d.named("a/b")], "a name of letters"),
        ([str(tmp_path / "v.txt")], "is a .gguf, .safetensors or .npy file"),
        ([str(tmp_path / "missing.npy")], "cannot read it as a .npy array"),
    ]:
        with pytest.raises(CaptureError, match=match) as e:
            read_probes(CaptureSettings(probes=probes).probes)
        assert "\n" not in str(e.value)


def test_a_session_without_probes_says_so(synthetic_model) -> None:
    s = llmri.capture(synthetic_model, "hi", max_new_tokens=2)
    assert s.probes == []
    with pytest.raises(StoreError, match="no probe 'x'"):
        s.probe("x")
