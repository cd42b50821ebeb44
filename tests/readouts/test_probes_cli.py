"""Direction probes from the command line (``llmri capture --probe FILE[@LAYERS]``, ``llmri info``), in
live chat (``ModelEngine(probes=...)``) and in batched ``capture_many``: each session records them, equal
to a hand computation on Hugging Face's own hidden states."""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri import CaptureError  # noqa: E402
from llmri.commands import probes as flags  # noqa: E402


def _hf_projection(model, ids: list[int], layer: int, v: np.ndarray) -> np.ndarray:
    """float64 ``[T]``: block ``layer``'s output from HF's output_hidden_states (on a copy), dotted
    with ``v`` over its norm."""
    ref = copy.deepcopy(model.model)
    with torch.inference_mode():
        out = ref(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    h = out.hidden_states[layer + 1][0].double().numpy()
    u = v.astype(np.float64) / np.linalg.norm(v)
    return h @ u


def test_the_probe_flag_reads_paths_and_layers(tmp_path) -> None:
    v = np.arange(1, 9, dtype=np.float32)
    np.save(tmp_path / "v.npy", v)
    np.save(tmp_path / "w.npy", v)
    d = llmri.Direction(np.stack([v, 2 * v, 3 * v]), (2, 3, 4), "fp-x", {"method": "mean_diff"})
    d.save(tmp_path / "d.gguf")
    got = flags.options(argparse.Namespace(probe_files=[str(tmp_path / "v.npy"), f"{tmp_path / 'w.npy'}@3,5",
                                                        f"{tmp_path / 'd.gguf'}@3"]))["probes"]  # fmt: skip
    assert got[0] == str(tmp_path / "v.npy")  # read when the capture opens: every layer of the model
    assert got[1].layers == (3, 5) and got[1].name == "w" and (got[1].array() == v).all()
    assert got[2].layers == (3,) and got[2].name == "d" and got[2].model == "fp-x" and (got[2].array() == 2 * v).all()
    assert flags.options(argparse.Namespace(probe_files=None)) == {}
    with pytest.raises(CaptureError, match="two probes named v"):  # the files are read, their names checked
        flags.options(argparse.Namespace(probe_files=[str(tmp_path / "v.npy"), f"{tmp_path / 'v.npy'}@3"]))
    for text, match in [("@3", "--probe takes FILE"), (f"{tmp_path / 'd.gguf'}@9", "no vector for layer 9")]:
        with pytest.raises(CaptureError, match=match):
            flags.parse_probe(text)


def test_view_needs_a_model_for_probes_and_reads_the_files_first(tmp_path) -> None:
    from llmri.commands.view import live_plugin

    base = {"paths": [], "backend": None, "lens": False, "attention": False, "openai_url": None}
    with pytest.raises(CaptureError, match="--probe reads a local model's vectors: give --model too"):
        live_plugin(argparse.Namespace(**base, model=None, probe_files=["x.npy"]))
    with pytest.raises(CaptureError, match="cannot read it as a .npy array"):  # before any model loads
        live_plugin(argparse.Namespace(**base, model="no-such-model", probe_files=[str(tmp_path / "x.npy")]))


@pytest.mark.slow
def test_cli_capture_with_probes_and_info(real_model, tmp_path, capsys) -> None:
    from llmri import cli

    rng = np.random.default_rng(0)
    d = llmri.Direction(rng.standard_normal((29, 576)).astype(np.float32), tuple(range(1, 30)), real_model.fingerprint)
    d.save(tmp_path / "paris.gguf")
    v = rng.standard_normal(576).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    out = tmp_path / "c.zarr"
    args = ["capture", "Hello", "-o", str(out), "--raw", "--max-new-tokens", "2", "--quiet"]
    probe_args = ["--probe", str(tmp_path / "paris.gguf"), "--probe", f"{tmp_path / 'v.npy'}@12"]
    assert cli.main([*args, *probe_args]) == 0
    sid = capsys.readouterr().out.strip().splitlines()[-1]
    s = llmri.open_store(str(out)).session(sid)
    assert s.probes == ["paris", "v"]
    ids = s.tokens.ids.tolist()
    np.testing.assert_allclose(
        s.probe("v").projection[:, 12], _hf_projection(real_model, ids, 12, v), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        s.probe("paris").projection[:, 20], _hf_projection(real_model, ids, 20, d.array()[19]), rtol=1e-4, atol=1e-3
    )
    assert np.isnan(s.probe("paris").projection[:, 0]).all() and np.isnan(s.probe("v").projection[:, 11]).all()
    assert cli.main(["info", str(out), sid]) == 0
    info = capsys.readouterr().out
    assert "probe        paris: resid layers 1-29 d_model 576 |d| " in info
    assert f"model {real_model.fingerprint}; sha256 {d.vectors.sha256()[:12]})" in info
    assert "probe        v: resid layers 12 d_model 576" in info
    # a direction of another model, or a file that is no direction: one line, nothing generated
    llmri.Direction(rng.standard_normal((1, 576)).astype(np.float32), (3,), "another-model").save(tmp_path / "o.gguf")
    assert cli.main([*args, "--probe", str(tmp_path / "o.gguf")]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert "probe o: the direction was made on another model (fingerprint another-model" in err
    assert cli.main([*args, "--probe", str(tmp_path / "x.txt")]) != 0
    assert "is a .gguf, .safetensors or .npy file" in capsys.readouterr().err


def test_live_chat_engine_records_the_probes_every_turn(tmp_path) -> None:
    from helpers import tiny_model
    from llmri.viewer.live import ModelEngine

    model = tiny_model()
    v = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    np.save(tmp_path / "wide.npy", np.ones(576, np.float32))
    d = llmri.Direction(np.stack([v, -v]), (0, 1), "tiny").named("dir")  # HF's last hidden state is normed
    engine = ModelEngine(model, probes=[d])
    assert engine.describe()["probes"] == ["dir"]
    store = llmri.open_store(str(tmp_path / "live.zarr"), create=True)
    settings = {"max_new_tokens": 3, "temperature": 0.0, "top_p": 1.0, "seed": 0, "signals": None, "reducer": "random"}
    for turn in ("hi", "again"):
        st = engine.open([{"role": "user", "content": turn}], settings, store, {})
        for _ in st:
            pass
        s = store.session(st.session_id)
        ids = s.tokens.ids.tolist()
        np.testing.assert_allclose(
            s.probe("dir").projection[:, 0], _hf_projection(model, ids, 0, v), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            s.probe("dir").projection[:, 1], _hf_projection(model, ids, 1, -v), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(CaptureError, match="probe wide: the direction has width 576, the model's d_model is 32"):
        llmri.capture(model, "hi", probes=[str(tmp_path / "wide.npy")], max_new_tokens=1)


def test_capture_many_records_the_probes_in_batches(tmp_path) -> None:
    from helpers import tiny_model
    from llmri.study import capture_many

    model = tiny_model()
    v = np.random.default_rng(2).standard_normal(32).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    prompts = ["one", "a longer prompt, padded on the left of a batch"]
    path = str(tmp_path / "s.zarr")
    from llmri.readouts.sae import SAE

    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=g) / 32**0.5
    sae = SAE(W_enc=w, b_enc=torch.zeros(48), W_dec=w.T.contiguous(), b_dec=torch.zeros(32), architecture="relu",
              name="s1", source_format="test", path="", layer=1, signal="resid")  # fmt: skip
    # the rows of a batch share the template's SAE and probe steps (before, a batched row had no SAE rows)
    opts = {"max_new_tokens": 3, "probes": [str(tmp_path / "v.npy")], "saes": [sae], "sae_k": 4}
    report = capture_many(model, prompts, store=path, batch_size=2, **opts)
    assert report.captured == 2
    store = llmri.open_store(path)
    for sid in store.session_ids():
        s = store.session(sid)
        ref = llmri.capture(model, s.meta["prompt"], **opts)
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
        got = s.probe("v")
        assert s.meta["probes"][0]["layers"] == [0, 1, 2]  # a .npy vector: every layer
        np.testing.assert_allclose(got.projection, ref.probe("v").projection, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.cosine, ref.probe("v").cosine, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(s.sae("s1").ids, ref.sae("s1").ids)


def test_a_bound_direction_steers_and_is_watched_in_a_capture_of_some_layers() -> None:
    # layers= keys the calibration by the layers recorded; a direction's fingerprint is the model's own
    from helpers import tiny_model

    model = tiny_model()
    v = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    d = llmri.Direction(v[None], (1,), "tiny").named("d")
    opts = {"max_new_tokens": 2, "probes": [d], "layers": "1-2"}
    base = llmri.capture(model, "hello", **opts)
    s = llmri.capture(model, "hello", interventions=[llmri.steer(d, scale=2.0, positions="all")], **opts)
    got, was = s.probe("d").projection, base.probe("d").projection
    assert got.shape == (len(s), 2) and np.isnan(got[:, 1]).all()  # session layers 1, 2: the direction has 1
    n = s.tokens.role.count("prompt")  # the prompt's positions: the same residual plus 2 v, exactly along v
    np.testing.assert_allclose(got[:n, 0] - was[:n, 0], 2.0 * np.linalg.norm(v), rtol=1e-4)


def test_rerun_watches_the_sessions_probes_again() -> None:
    from helpers import tiny_model

    model = tiny_model()
    rng = np.random.default_rng(4)
    d = llmri.Direction(rng.standard_normal((2, 32)).astype(np.float32), (0, 2), "tiny", {"method": "x"}).named("d")
    s = llmri.capture(model, "hello", probes=[d], max_new_tokens=3)
    again = llmri.rerun(s, model=model)
    assert again.probes == ["d"] and again.meta["probes"] == s.meta["probes"]
    np.testing.assert_array_equal(again.probe("d").projection, s.probe("d").projection)
    steered = llmri.rerun(s, [llmri.steer(d, layers=2, scale=3.0, positions="all")], model=model)
    n = s.tokens.role.count("prompt")
    np.testing.assert_allclose(
        steered.probe("d").projection[:n, 2] - s.probe("d").projection[:n, 2],
        3.0 * np.linalg.norm(d.array()[1]),
        rtol=1e-4,
    )


@pytest.mark.slow
def test_llama_cpp_records_the_same_probes_on_its_own_vectors(real_model) -> None:
    pytest.importorskip("llama_cpp")
    gguf = llmri.load_model(backend="llama.cpp")
    rows = np.random.default_rng(5).standard_normal((2, 576)).astype(np.float32)
    d = llmri.Direction(rows, (5, 12)).named("d")  # unbound: the GGUF file has its own fingerprint
    opts = {"probes": [d], "max_new_tokens": 4, "signals": "resid"}
    a, b = (
        llmri.capture(real_model, "The capital of France is", **opts),
        llmri.capture(gguf, "The capital of France is", **opts),
    )
    assert a.tokens.ids.tolist() == b.tokens.ids.tolist()
    err = np.abs(a.probe("d").cosine[:, [5, 12]] - b.probe("d").cosine[:, [5, 12]]).max()
    print(f"llama.cpp vs hf: cosine max abs difference {err:.1e}")
    assert err < 5e-3
    with pytest.raises(CaptureError, match="probe d: the direction was made on another model"):
        llmri.capture(gguf, "hi", probes=[llmri.Direction(rows, (5, 12), real_model.fingerprint).named("d")])
