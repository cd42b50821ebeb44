"""circuit-tracer's per-layer transcoders (``layer_L.safetensors``: ``W_enc`` ``[d_tc, d_model]``,
``W_dec``, ``b_enc``, ``b_dec``, ``activation_function.threshold`` or ``k``): loaded, and recorded from
the MLP's input like an SAE; reference: a dense encode written here, on a hook of the MLP's input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

import llmri  # noqa: E402
from helpers import tiny_model  # noqa: E402
from llmri import SAEError, load_sae  # noqa: E402

D, D_TC, LAYER = 32, 96, 1
HP = {"mlp": "model.layers.{i}.post_attention_layernorm"}


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_TC, D, generator=g) / D**0.5,  # F.linear's layout, as circuit-tracer saves it
        "W_dec": torch.randn(D_TC, D, generator=g) / D**0.5,
        "b_enc": 0.05 * torch.randn(D_TC, generator=g),
        "b_dec": torch.zeros(D),
        "activation_function.threshold": 0.1 * torch.rand(D_TC, generator=g),
    }


@pytest.fixture
def transcoder_file(tmp_path):
    path = tmp_path / f"layer_{LAYER}.safetensors"
    save_file(_weights(), str(path))
    return path


def test_load_a_circuit_tracer_transcoder(transcoder_file, tmp_path) -> None:
    tc = load_sae(transcoder_file)
    assert (tc.source_format, tc.architecture, tc.layer, tc.signal, tc.transcoder) == (
        "circuit_tracer", "jumprelu", LAYER, "mlp", True,
    )  # fmt: skip
    assert (tc.d_in, tc.d_sae) == (D, D_TC) and not tc.apply_b_dec_to_input
    w = _weights()
    x = torch.randn(7, D)
    pre = x @ w["W_enc"].T + w["b_enc"]  # circuit-tracer's encode: F.linear, then JumpReLU
    dense = pre * (pre > w["activation_function.threshold"])
    torch.testing.assert_close(tc.encode(x), torch.relu(dense), rtol=1e-5, atol=1e-5)
    topk = {**{k: v for k, v in w.items() if k != "activation_function.threshold"}, "k": torch.tensor(5)}
    save_file(topk, str(tmp_path / "layer_2.safetensors"))
    tk = load_sae(tmp_path / "layer_2.safetensors")
    assert (tk.architecture, tk.k, tk.layer) == ("topk", 5, 2)
    assert int(((tk.encode(x)) > 0).sum(-1).max()) <= 5
    save_file({"W_enc": w["W_enc"]}, str(tmp_path / "layer_3.safetensors"))
    with pytest.raises(SAEError, match="layer_3.safetensors: no b_enc weight"):
        load_sae(tmp_path / "layer_3.safetensors")


def test_a_capture_records_a_transcoders_features_from_the_mlp_input(transcoder_file) -> None:
    model = tiny_model()
    tc = load_sae(transcoder_file)
    with pytest.raises(
        SAEError,
        match=r"reads layer 1's MLP input, .* hook_points=\{'mlp': 'model.layers.\{i\}.post_attention_layernorm'\}",
    ):  # noqa: E501
        llmri.capture(model, "hi", saes=[tc], max_new_tokens=1)
    s = llmri.capture(model, "hello there", saes=[tc], sae_k=8, max_new_tokens=3, hook_points=HP)
    ref = copy.deepcopy(model.model)
    got: list[torch.Tensor] = []
    ref.model.layers[LAYER].post_attention_layernorm.register_forward_hook(lambda m, i, o: got.append(o[0]))
    with torch.inference_mode():
        ref(torch.tensor([s.tokens.ids.tolist()]), use_cache=False)
    w = _weights()
    pre = got[0] @ w["W_enc"].T + w["b_enc"]
    dense = torch.relu(pre) * (pre > w["activation_function.threshold"])
    values, ids = dense.topk(8, dim=-1)
    f = s.sae(tc.name)
    assert (f.ids == ids.numpy()).all()
    np.testing.assert_allclose(f.values.astype(np.float32), values.numpy(), rtol=2e-3, atol=2e-3)
    assert (f.l0 == (dense > 0).sum(-1).numpy()).all()
    assert np.isnan(f.fvu).all() and np.isnan(f.cosine).all()
    assert s.meta["sae"]["saes"][0]["transcoder"] is True
