"""SAE features in a capture (``saes=[...]``, ``sae_k``): the stored top-k, L0 and reconstruction error
against ``SAE.top_k`` / ``SAE.reconstruction`` of the full vectors taken independently (Hugging Face's
own ``output_hidden_states`` for resid, a hand-written hook on the MLP for mlp, on a copy of the model);
the session's record, the Zarr arrays and ``to_xarray``; every mismatch one line before generation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri import CaptureError, SAEError  # noqa: E402
from llmri.readouts.sae import SAE  # noqa: E402
from llmri.settings import CaptureSettings  # noqa: E402

K = 16


def random_sae(name: str, layer: int, signal: str, *, d_in: int = 576, d_sae: int = 512, arch: str = "relu",
               seed: int = 0, k: int | None = None) -> SAE:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    return SAE(
        W_enc=w, b_enc=-0.05 * torch.ones(d_sae), W_dec=w.T.contiguous(), b_dec=torch.zeros(d_in),
        architecture=arch, name=name, source_format="test", path=f"<{name}>", layer=layer, signal=signal, k=k,
    )  # fmt: skip


@pytest.fixture(scope="module")
def saes() -> list[SAE]:
    return [random_sae("res12", 12, "resid"), random_sae("mlp7", 7, "mlp", arch="topk", k=24, seed=1)]


@pytest.fixture(scope="module")
def captured(real_model, saes, tmp_path_factory):
    store = tmp_path_factory.mktemp("sae_store")
    s = llmri.capture(real_model, "The capital of France is", saes=saes, sae_k=K, max_new_tokens=5, store=str(store))
    return s, store


def _reference_vectors(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """resid 12 from HF's output_hidden_states, mlp 7 from a hook on layers[7].mlp: one forward of the
    whole sequence, no cache, on a copy (output_hidden_states leaves hooks on the model)."""
    ref = copy.deepcopy(model.model)
    got: dict[str, torch.Tensor] = {}
    handle = ref.model.layers[7].mlp.register_forward_hook(lambda m, i, o: got.__setitem__("mlp7", o[0].detach()))
    try:
        with torch.inference_mode():
            out = ref(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    got["res12"] = out.hidden_states[13][0]
    return got


@pytest.mark.slow
def test_stored_features_equal_the_sae_on_hf_vectors(real_model, saes, captured) -> None:
    s, _ = captured
    vectors = _reference_vectors(real_model, s.tokens.ids.tolist())
    for sae in saes:
        got = s.sae(sae.name)
        x = vectors[sae.name]
        ids, values = sae.top_k(x, K)
        fvu, cos = sae.reconstruction(x)
        l0 = (sae.encode(x) > 0).sum(-1).numpy()
        assert got.ids.dtype == np.int32 and got.values.dtype == np.float16 and got.ids.shape == (len(s), K)
        err = float(np.abs(got.values.astype(np.float32) - values.float().numpy()).max())
        print(f"{sae.name}: top-{K} values vs SAE.top_k of HF's vectors: max abs error {err:.2e}")
        assert (got.ids == ids.numpy()).all()
        np.testing.assert_allclose(got.values.astype(np.float32), values.float().numpy(), rtol=2e-3, atol=2e-3)
        assert (got.l0 == l0).all()
        np.testing.assert_allclose(got.fvu, fvu.numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got.cosine, cos.numpy(), rtol=1e-3, atol=1e-4)
    topk = s.sae("mlp7")
    assert (topk.l0 <= 24).all() and (topk.values[:, 0] > 0).all()


@pytest.mark.slow
def test_the_session_records_each_sae_and_the_store_keeps_its_arrays(saes, captured) -> None:
    import zarr

    s, store = captured
    assert s.saes == ["res12", "mlp7"]
    rec = s.meta["sae"]
    assert rec["k"] == K
    assert [r["name"] for r in rec["saes"]] == ["res12", "mlp7"]
    r0 = rec["saes"][0]
    assert (r0["architecture"], r0["d_in"], r0["d_sae"], r0["layer"], r0["signal"]) == ("relu", 576, 512, 12, "resid")
    assert r0["sha256"] == saes[0].sha256() and len(r0["sha256"]) == 64 and r0["sha256"] != rec["saes"][1]["sha256"]
    assert rec["saes"][1]["k"] == 24
    z = llmri.open_store(str(store)).session(s.id)
    for name in ("res12", "mlp7"):
        a, b = s.sae(name), z.sae(name)
        for f in ("ids", "values", "l0", "fvu", "cosine"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert b.record == a.record
    arr = zarr.open_array(str(Path(store) / "sessions" / s.id / "sae" / "res12" / "ids"), mode="r")
    assert arr.metadata.dimension_names == ("token", "sae_rank") and arr.dtype == np.int32
    fvu = zarr.open_array(str(Path(store) / "sessions" / s.id / "sae" / "res12" / "fvu"), mode="r")
    assert fvu.metadata.dimension_names == ("token",)
    sub = z.sae("res12", 2, 4)
    assert len(sub) == 2 and (sub.ids == s.sae("res12").ids[2:4]).all()
    pytest.importorskip("xarray")
    for session in (s, z):
        ds = session.to_xarray()
        assert ds["sae_res12_ids"].dims == ("token", "sae_rank")
        np.testing.assert_array_equal(np.asarray(ds["sae_mlp7_values"]), s.sae("mlp7").values)
        np.testing.assert_array_equal(np.asarray(ds["sae_mlp7_l0"]), s.sae("mlp7").l0)
    json.dumps(z.meta)  # the record is JSON


@pytest.mark.slow
def test_activation_of_one_feature_over_the_session(captured) -> None:
    s, _ = captured
    f = s.sae("res12")
    feature = int(f.ids[1, 0])
    act = f.activation(feature)
    assert act.shape == (len(s),) and act[1] == pytest.approx(float(f.values[1, 0]))
    assert ((act > 0) == (f.ids == feature).any(-1)).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sae", "error"),
    [
        (random_sae("wide", 3, "resid", d_in=64), "reads vectors of 64, the model's are 576 wide"),
        (random_sae("deep", 30, "resid"), "reads layer 30, the model has layers 0-29"),
        (random_sae("attn", 3, "attn"), "reads attn, which this capture does not record"),
    ],
)
def test_a_mismatched_sae_is_one_line_before_generation(real_model, tmp_path, sae, error) -> None:
    store = tmp_path / "s"
    with pytest.raises(SAEError, match=error) as e:
        llmri.capture(real_model, "hi", saes=[sae], signals="resid,mlp", max_new_tokens=2, store=str(store))
    assert "\n" not in str(e.value)
    assert not store.exists()  # nothing was created


@pytest.mark.slow
def test_an_sae_of_another_model_and_names_that_clash(real_model) -> None:
    other = random_sae("gpt", 3, "resid")
    other.model_name = "gpt2-small"
    with pytest.raises(SAEError, match="trained on gpt2-small, the model is SmolLM2-135M-Instruct"):
        llmri.capture(real_model, "hi", saes=[other], max_new_tokens=1)
    ours = random_sae("ours", 3, "resid")
    ours.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    s = llmri.capture(real_model, "hi", saes=[ours], max_new_tokens=1, sae_k=4)
    assert s.sae("ours").ids.shape == (len(s), 4)
    with pytest.raises(SAEError, match="two SAEs named ours"):
        llmri.capture(real_model, "hi", saes=[ours, random_sae("ours", 4, "resid")], max_new_tokens=1)


def test_bad_sae_options_are_one_line() -> None:
    with pytest.raises(CaptureError, match="sae_k must be a whole number >= 1"):
        CaptureSettings(sae_k=0)
    with pytest.raises(CaptureError, match="is not an SAE"):
        CaptureSettings(saes=[3])
    assert CaptureSettings(saes="x/y").saes == ("x/y",)
    with pytest.raises(SAEError, match="no-such-sae"):
        llmri.capture(None, "hi", saes=["no-such-sae"], max_new_tokens=1)


def test_a_session_without_saes_says_so(synthetic_model) -> None:
    from llmri import StoreError

    s = llmri.capture(synthetic_model, "hi", max_new_tokens=2)
    assert s.saes == []
    with pytest.raises(StoreError, match="no SAE 'x'"):
        s.sae("x")


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory):
    """A tiny random Gemma 2 (post-feedforward norms), saved and loaded, on the bundled tokenizer."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    import llmri

    tok = llmri.load_model().tokenizer
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "gemma2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    )  # fmt: skip
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        where = tmp_path_factory.mktemp("gemma2")
        AutoModelForCausalLM.from_config(cfg).save_pretrained(where)
        tok.save_pretrained(where)
        return llmri.load_model(where)
    finally:
        transformers.logging.set_verbosity(verbosity)


@pytest.mark.slow
def test_gemma_mlp_saes_read_their_side_of_the_post_norm(tiny_gemma2) -> None:
    """Gemma Scope's MLP SAEs (hook_mlp_out) read after Gemma's post-feedforward norm; llmri's hf
    ``mlp`` is before it: refused with the hook point that records it, which then matches a hook on
    the norm; an SAE of ``layers.L.mlp`` (before the norm) reads the default and is refused at the norm."""
    after = random_sae("gs_mlp", 1, "mlp", d_in=64, d_sae=128)
    after.hook_name = "blocks.1.hook_mlp_out"
    with pytest.raises(SAEError, match=r"after the post-feedforward norm .* hook_points=\{'mlp': 'model.layers.\{i\}.post_feedforward_layernorm'\}"):  # noqa: E501
        llmri.capture(tiny_gemma2, "hi", saes=[after], max_new_tokens=1)
    hp = {"mlp": "model.layers.{i}.post_feedforward_layernorm"}
    s = llmri.capture(tiny_gemma2, "hello", saes=[after], max_new_tokens=2, hook_points=hp, sae_k=8)
    ref = copy.deepcopy(tiny_gemma2.model)
    got: list[torch.Tensor] = []
    ref.model.layers[1].post_feedforward_layernorm.register_forward_hook(lambda m, i, o: got.append(o[0]))
    with torch.inference_mode():
        ref(torch.tensor([s.tokens.ids.tolist()]), use_cache=False)
    ids, _ = after.top_k(got[0], 8)
    assert (s.sae("gs_mlp").ids == ids.numpy()).all()
    before = random_sae("sp_mlp", 1, "mlp", d_in=64, d_sae=128)
    before.hook_name = "model.layers.1.mlp"
    assert llmri.capture(tiny_gemma2, "hi", saes=[before], max_new_tokens=1).saes == ["sp_mlp"]
    with pytest.raises(SAEError, match="before the post-feedforward norm"):
        llmri.capture(tiny_gemma2, "hi", saes=[before], max_new_tokens=1, hook_points=hp)


def test_the_sparse_decode_equals_the_dense_one() -> None:
    """On the CPU a sparse step decodes through its active rows only: the same as the dense matmul."""
    sae = random_sae("topk", 3, "resid", arch="topk", k=16, d_sae=1024)
    x = torch.randn(6, 576) * 3
    acts, rec = sae.encode_decode(x)
    assert int((acts > 0).sum(-1).max()) * 8 <= sae.d_sae  # the sparse path ran
    torch.testing.assert_close(rec, acts @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)
