"""load_sae against SAELens's own encodings (tests/readouts/sae_reference/make_golden.py), for every format
and architecture; top-k against the dense encode; every bad input one line; hook names to llmri's sites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from llmri import SAEError, load_sae  # noqa: E402
from llmri.readouts.sae import SAE_FORMATS, map_hook  # noqa: E402

FIX = Path(__file__).parent / "sae_reference" / "fixtures"
GOLDEN = np.load(FIX / "golden.npz")
GEMMA_SCOPE = FIX / "gemma_scope" / "gemma-scope-2b-pt-res" / "layer_5" / "width_16k" / "average_l0_10"
GEMMA_SCOPE_2 = FIX / "gemma_scope_2" / "gemma-scope-2-1b-pt" / "resid_post" / "layer_7_width_16k_l0_small"
SPARSIFY = FIX / "sparsify" / "layers.4"
#: fixture -> (path, format, architecture, signal, layer)
CASES = {
    "saelens_relu": (FIX / "saelens_relu", "saelens", "relu", "resid", 3),
    "saelens_relu_nobdec": (FIX / "saelens_relu_nobdec", "saelens", "relu", "mlp", 2),
    "saelens_relu_layernorm": (FIX / "saelens_relu_layernorm", "saelens", "relu", "resid", 3),
    "saelens_relu_constnorm": (FIX / "saelens_relu_constnorm", "saelens", "relu", "attn", 1),
    "saelens_jumprelu": (FIX / "saelens_jumprelu", "saelens", "jumprelu", "resid", 5),
    "saelens_topk": (FIX / "saelens_topk", "saelens", "topk", "resid", 3),
    "saelens_topk_rescaled": (FIX / "saelens_topk_rescaled", "saelens", "topk", "mlp", 3),
    "saelens_batchtopk": (FIX / "saelens_batchtopk", "saelens", "batchtopk", "resid", 6),
    "saelens_batchtopk_checkpoint": (FIX / "saelens_batchtopk_checkpoint", "saelens", "batchtopk", "resid", 6),
    "gemma_scope": (GEMMA_SCOPE, "gemma_scope", "jumprelu", "resid", 5),
    "gemma_scope_2": (GEMMA_SCOPE_2, "gemma_scope_2", "jumprelu", "resid", 7),
    "sparsify": (SPARSIFY, "sparsify", "topk", "resid", 4),
}
# float32 on the CPU, the same operations in the same order as SAELens: the encodings agree to the
# bit except where llmri folds SAELens's decoder-norm rescaling into the weights (topk_rescaled,
# the batchtopk checkpoint), which moves the last bits (seen: 2e-6 on activations of order 1).
# A JumpReLU/top-k decision could flip only for a pre-activation within 1e-6 of its threshold or of
# the k-th value, which none of these seeded inputs has (the exact equality of the support below).
ATOL = RTOL = 1e-5


def x() -> object:
    return torch.from_numpy(GOLDEN["x"])


def test_every_golden_fixture_is_a_case() -> None:
    assert {k[: -len(".acts")] for k in GOLDEN.files if k.endswith(".acts")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_equals_saelens(name: str) -> None:
    path, fmt, arch, signal, layer = CASES[name]
    sae = load_sae(path)
    assert (sae.source_format, sae.architecture, sae.signal, sae.layer) == (fmt, arch, signal, layer)
    assert (sae.d_in, sae.d_sae) == (64, 256)
    acts = sae.encode(x()).numpy()
    want = GOLDEN[f"{name}.acts"]
    assert ((acts > 0) == (want > 0)).all(), "the same features fire"
    np.testing.assert_allclose(acts, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(sae.reconstruct(x()).numpy(), GOLDEN[f"{name}.recon"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["saelens_relu", "saelens_jumprelu", "saelens_topk", "sparsify"])
def test_top_k_equals_the_dense_top_k(name: str) -> None:
    sae = load_sae(CASES[name][0])
    xs = x().reshape(3, 4, 64)  # any leading shape
    ids, values = sae.top_k(xs, 16)
    assert ids.shape == values.shape == (3, 4, 16)
    assert ids.dtype == torch.int32 and values.dtype == torch.float16
    dense = sae.encode(xs)
    want = dense.topk(16, dim=-1).values
    np.testing.assert_array_equal(values.numpy(), want.to(torch.float16).numpy())
    picked = dense.gather(-1, ids.long())
    np.testing.assert_array_equal(picked.to(torch.float16).numpy(), values.numpy())
    assert (values[..., :-1] >= values[..., 1:]).all(), "strongest first"
    if CASES[name][2] == "topk":  # k = 8: the tail is zeros
        assert (values[..., 8:] == 0).all()


def test_encode_keeps_dtype_and_computes_in_float32() -> None:
    sae = load_sae(FIX / "saelens_relu")
    xs = x().to(torch.bfloat16)
    out = sae.encode(xs)
    assert out.dtype == torch.bfloat16 and out.shape == (12, 256)
    ref = sae.encode(xs.to(torch.float32))
    np.testing.assert_array_equal(out.float().numpy(), ref.to(torch.bfloat16).float().numpy())


def test_reconstruction_error() -> None:
    sae = load_sae(FIX / "saelens_jumprelu")
    fvu, cos = sae.reconstruction(x())
    assert fvu.shape == cos.shape == (12,)
    xf, rec = x(), torch.from_numpy(GOLDEN["saelens_jumprelu.recon"])
    np.testing.assert_allclose(fvu.numpy(), ((xf - rec) ** 2).sum(-1) / (xf**2).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(cos.numpy(), torch.nn.functional.cosine_similarity(xf, rec, dim=-1).numpy(), rtol=1e-5)


def test_a_weights_file_loads_like_its_directory() -> None:
    for path in (FIX / "saelens_relu" / "sae_weights.safetensors", GEMMA_SCOPE / "params.npz",
                 GEMMA_SCOPE_2 / "params.safetensors", SPARSIFY / "sae.safetensors"):  # fmt: skip
        assert load_sae(path).encode(x()).shape == (12, 256)


def test_layer_and_signal_given_override_the_config() -> None:
    sae = load_sae(FIX / "saelens_relu", layer=9, signal="mlp", name="mine")
    assert (sae.signal, sae.layer, sae.name, sae.hook_name) == ("mlp", 9, "mine", "blocks.3.hook_resid_post")
    assert load_sae(FIX / "saelens_relu", layer=1).signal == "resid"


def test_formats_are_registered_by_name() -> None:
    assert SAE_FORMATS.names() == ["circuit_tracer", "gemma_scope", "gemma_scope_2", "pickle", "saelens", "sparsify"]
    assert load_sae(SPARSIFY, format="sparsify").k == 8


@pytest.mark.parametrize(
    ("hook", "site"),
    [
        ("blocks.12.hook_resid_post", ("resid", 12)),
        ("blocks.12.hook_resid_pre", ("resid", 11)),
        ("blocks.1.hook_resid_pre", ("resid", 0)),
        ("blocks.3.hook_attn_out", ("attn", 3)),
        ("blocks.3.hook_mlp_out", ("mlp", 3)),
        ("model.layers.7.output", ("resid", 7)),
        ("model.layers.7.post_feedforward_layernorm.output", ("mlp", 7)),
        ("layers.4", ("resid", 4)),
        ("layers.4.mlp", ("mlp", 4)),
        ("layers.4.self_attn", ("attn", 4)),
        ("gpt_neox.layers.2.attention", ("attn", 2)),
    ],
)
def test_hook_names_map_to_llmri_sites(hook: str, site: tuple[str, int]) -> None:
    assert map_hook(hook) == site


@pytest.mark.parametrize(
    ("hook", "why"),
    [
        ("blocks.0.hook_resid_pre", "embeddings"),
        ("hook_embed", "embeddings"),
        ("model.embed_tokens", "embeddings"),
        ("blocks.2.hook_resid_mid", "not a signal llmri records"),
        ("blocks.2.attn.hook_z", "not a signal llmri records"),
        ("model.layers.7.self_attn.o_proj.input", "not a signal llmri records"),
    ],
)
def test_hooks_llmri_does_not_record(hook: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        map_hook(hook)


def _copy(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_cfg(d: Path, name: str = "cfg.json", **changes: object) -> None:
    cfg = json.loads((d / name).read_text())
    meta = changes.pop("metadata", None)
    cfg.update(changes)
    if isinstance(meta, dict):
        cfg["metadata"].update(meta)
    (d / name).write_text(json.dumps(cfg))


def _edit_weights(file: Path, drop: str | None = None, **replace: object) -> None:
    w = load_file(str(file))
    if drop:
        del w[drop]
    w.update(replace)  # type: ignore[arg-type]
    save_file(w, str(file))


def _bad_inputs(tmp: Path) -> list[tuple[Path, str, dict[str, object]]]:
    """(path, what the line says, load_sae kwargs): each case builds its broken copy."""
    cases: list[tuple[Path, str, dict[str, object]]] = []
    (tmp / "empty").mkdir()
    cases.append((tmp / "empty", "not an SAE", {}))
    cases.append((tmp / "nothing-here", "no such file or directory", {}))
    (tmp / "notes.txt").write_text("hello")
    cases.append((tmp / "notes.txt", "not an SAE file", {}))
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "sae_weights.safetensors").write_bytes(b"\x00" * 100)
    shutil.copy(FIX / "saelens_relu" / "cfg.json", tmp / "garbage")
    cases.append((tmp / "garbage", "not a safetensors file", {}))
    d = _copy(tmp / "c1", FIX / "saelens_relu")
    (d / "cfg.json").write_text("{not json")
    cases.append((d, "not a readable JSON config", {}))
    d = _copy(tmp / "c2", FIX / "saelens_relu")
    _edit_weights(d / "sae_weights.safetensors", drop="W_dec")
    cases.append((d, "no W_dec weight", {}))
    d = _copy(tmp / "c3", FIX / "saelens_relu")
    _edit_weights(d / "sae_weights.safetensors", b_enc=torch.zeros(255))
    cases.append((d, "b_enc has shape [255], expected [256]", {}))
    d = _copy(tmp / "c4", FIX / "saelens_relu")
    _edit_cfg(d, d_in=32)
    cases.append((d, "W_enc has shape [64, 256], expected [32, 256]", {}))
    d = _copy(tmp / "c5", FIX / "saelens_jumprelu")
    _edit_weights(d / "sae_weights.safetensors", drop="threshold")
    cases.append((d, "without a threshold", {}))
    d = _copy(tmp / "c6", FIX / "saelens_relu")
    _edit_cfg(d, architecture="gated")
    cases.append((d, "architecture 'gated' is not one llmri runs", {}))
    d = _copy(tmp / "c7", FIX / "saelens_relu")
    _edit_cfg(d, metadata={"hook_name": "blocks.0.hook_resid_pre"})
    cases.append((d, "reads the embeddings", {}))
    d = _copy(tmp / "c8", FIX / "saelens_relu")
    _edit_weights(d / "sae_weights.safetensors", b_dec=torch.full((64,), float("nan")))
    cases.append((d, "b_dec holds NaN", {}))
    d = _copy(tmp / "c9", SPARSIFY)
    _edit_cfg(d, transcode=True)
    cases.append((d, "a transcoder", {}))
    d = _copy(tmp / "c10", GEMMA_SCOPE)
    np.savez(d / "params.npz", W_enc=np.zeros((64, 256), np.float32))
    cases.append((d, "no threshold weight", {}))
    d = tmp / "pickled"
    d.mkdir()
    torch.save(load_file(str(FIX / "saelens_relu" / "sae_weights.safetensors")), d / "sae.pt")
    cases.append((d / "sae.pt", "a pickle, which can run arbitrary code", {}))
    cases.append((d, "a pickle, which can run arbitrary code", {}))
    cases.append((FIX / "saelens_relu", "unknown signal 'res'", {"signal": "res", "layer": 2}))
    cases.append((FIX / "saelens_relu", "unknown SAE format 'x'", {"format": "x"}))
    return cases


def test_every_bad_input_is_one_line_naming_the_file(tmp_path: Path) -> None:
    for path, what, kw in _bad_inputs(tmp_path):
        with pytest.raises(SAEError) as info:
            load_sae(path, **kw)  # type: ignore[arg-type]
        line = str(info.value)
        assert "\n" not in line and str(path) in line and what in line, (path, what, line)


def test_a_pickle_loads_when_allowed(tmp_path: Path) -> None:
    w = load_file(str(FIX / "saelens_relu" / "sae_weights.safetensors"))
    torch.save(w, tmp_path / "sae.pt")
    shutil.copy(FIX / "saelens_relu" / "cfg.json", tmp_path)
    sae = load_sae(tmp_path / "sae.pt", allow_pickle=True)
    assert (sae.source_format, sae.signal, sae.layer) == ("pickle", "resid", 3)
    np.testing.assert_allclose(sae.encode(x()).numpy(), GOLDEN["saelens_relu.acts"], atol=ATOL, rtol=RTOL)


def test_an_unmapped_site_can_be_given(tmp_path: Path) -> None:
    d = _copy(tmp_path, FIX / "saelens_relu")
    _edit_cfg(d, metadata={"hook_name": "blocks.2.hook_resid_mid"})
    with pytest.raises(SAEError, match="pass layer= and signal="):
        load_sae(d)
    with pytest.raises(SAEError, match="give both layer= and signal="):
        load_sae(d, layer=2)
    assert (load_sae(d, layer=2, signal="resid").signal, load_sae(d, layer=2, signal="resid").layer) == ("resid", 2)


def test_loading_an_sae_keeps_import_llmri_light() -> None:
    import subprocess
    import sys

    code = "import llmri, sys; from llmri.readouts.sae import load_sae; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_check_model_is_one_line_before_any_generation() -> None:
    sae = load_sae(FIX / "saelens_relu")  # resid 3, d_in 64
    sae.check_model(64, 4, ("resid", "mlp"))
    for args, what in [
        ((128, 4), "reads vectors of 64, the model's are 128 wide"),
        ((64, 3), "reads layer 3, the model has layers 0-2"),
        ((64, 4, ("mlp",)), "reads resid, which this capture does not record"),
    ]:
        with pytest.raises(SAEError, match=what) as info:
            sae.check_model(*args)  # type: ignore[arg-type]
        assert "\n" not in str(info.value) and str(FIX / "saelens_relu") in str(info.value)


def test_a_forced_format_takes_the_weights_file_too() -> None:
    sae = load_sae(FIX / "saelens_topk" / "sae_weights.safetensors", format="saelens")
    assert (sae.architecture, sae.k) == ("topk", 8)


def test_gemma_scope_outside_its_hub_layout_needs_its_site(tmp_path: Path) -> None:
    shutil.copy(GEMMA_SCOPE / "params.npz", tmp_path / "params.npz")
    sae = load_sae(tmp_path / "params.npz")
    assert (sae.signal, sae.layer, sae.hook_name) == (None, None, None)
    with pytest.raises(SAEError, match="load it with layer= and signal="):
        sae.check_model(64, 8)
    sae = load_sae(tmp_path, layer=5, signal="resid")
    sae.check_model(64, 8)
    np.testing.assert_allclose(sae.encode(x()).numpy(), GOLDEN["gemma_scope.acts"], atol=ATOL, rtol=RTOL)


def test_sae_readout_of_a_step() -> None:
    from llmri.readouts.sae import sae_readout

    relu, topk = load_sae(FIX / "saelens_relu"), load_sae(FIX / "saelens_topk_rescaled")  # resid 3, mlp 3
    n, layers = 12, 5
    acts = {
        s: torch.randn(n, layers, 64, generator=torch.Generator().manual_seed(i))
        for i, s in enumerate(("resid", "mlp"))
    }
    acts["resid"][:, 3] = x()
    acts = {s: a.to(torch.bfloat16) for s, a in acts.items()}  # the model's dtype
    rows = sae_readout([relu, topk], acts, k=32)
    assert set(rows) == {"saelens_relu", "saelens_topk_rescaled"}
    for sae in (relu, topk):
        r, xs = rows[sae.name], acts[sae.signal][:, sae.layer]
        assert len(r) == n and r.ids.shape == r.values.shape == (n, 32)
        assert (r.ids.dtype, r.values.dtype, r.l0.dtype, r.fvu.dtype, r.cosine.dtype) == (
            np.int32, np.float16, np.int32, np.float32, np.float32
        )  # fmt: skip
        ids, values = sae.top_k(xs, 32)
        np.testing.assert_array_equal(r.values, values.numpy())
        dense = sae.encode(xs.float())
        np.testing.assert_array_equal(r.l0, (dense > 0).sum(-1).numpy())
        fvu, cos = sae.reconstruction(xs)
        np.testing.assert_allclose(r.fvu, fvu.numpy(), rtol=1e-6)
        np.testing.assert_allclose(r.cosine, cos.numpy(), rtol=1e-6)
    assert (rows["saelens_topk_rescaled"].l0 <= 8).all()
    with pytest.raises(ValueError, match="which this step did not record"):
        sae_readout([relu], {"mlp": acts["mlp"]})
