"""SAE features from the command line (``llmri capture --sae PATH --sae-k K --sae-labels FILE``,
``llmri info``) and in live chat (``ModelEngine(saes=...)``, ``llmri view --sae``): each turn records them."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri import CaptureError, SAEError  # noqa: E402
from llmri.readouts.sae import SAE  # noqa: E402
from llmri.readouts.sae.train import save_sae  # noqa: E402


def _sae(d_in: int, layer: int, name: str) -> SAE:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d_in, 64, generator=g) / d_in**0.5
    return SAE(W_enc=w, b_enc=torch.zeros(64), W_dec=w.T.contiguous(), b_dec=torch.zeros(d_in), architecture="relu",
               name=name, source_format="test", path="", layer=layer, signal="resid")  # fmt: skip


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("saes")
    save_sae(_sae(576, 4, "r4"), where / "r4")
    (where / "labels.json").write_text(json.dumps([{"index": "3", "description": "three"}]))
    return where


@pytest.mark.slow
def test_cli_capture_with_an_sae_and_info(sae_dir, tmp_path, capsys) -> None:
    from llmri import cli

    out = tmp_path / "c.zarr"
    args = ["capture", "Hello", "-o", str(out), "--raw", "--max-new-tokens", "2", "--quiet"]
    sae_args = ["--sae", str(sae_dir / "r4"), "--sae-k", "5", "--sae-labels", str(sae_dir / "labels.json")]
    assert cli.main([*args, *sae_args]) == 0
    sid = capsys.readouterr().out.strip().splitlines()[-1]
    s = llmri.open_store(str(out)).session(sid)
    f = s.sae("r4")
    assert f.ids.shape == (len(s), 5) and f.labels == {3: "three"} and s.meta["sae"]["saes"][0]["format"] == "saelens"
    ref = llmri.load_sae(sae_dir / "r4")
    assert s.meta["sae"]["saes"][0]["sha256"] == ref.sha256()
    assert cli.main(["info", str(out), sid]) == 0
    info = capsys.readouterr().out
    assert "sae          r4: relu 576->64 reads resid 4, top 5 per token, 1 labels (saelens:" in info
    # bad flags: one line each, before the model loads
    assert cli.main([*args, "--sae", str(tmp_path / "nope")]) != 0
    assert "nope" in capsys.readouterr().err
    assert cli.main([*args, "--sae-k", "3"]) != 0
    assert "--sae-k and --sae-labels go with --sae PATH" in capsys.readouterr().err
    assert cli.main([*args, "--sae", str(sae_dir / "r4"), "--sae-labels", "a", "--sae-labels", "b"]) != 0
    assert "give one --sae-labels per --sae (1 SAEs, 2 label files)" in capsys.readouterr().err


def test_view_needs_a_model_for_saes() -> None:
    from llmri.commands.view import live_plugin

    base = {"paths": [], "model": None, "backend": None, "lens": False, "attention": False}
    with pytest.raises(CaptureError, match="--sae reads a local model's vectors: give --model too"):
        live_plugin(argparse.Namespace(**base, openai_url="http://127.0.0.1:1/v1", sae_paths=["x"]))


def test_live_chat_engine_records_the_saes_every_turn(tmp_path) -> None:
    from helpers import tiny_model
    from llmri.viewer.live import ModelEngine

    model = tiny_model()
    with pytest.raises(SAEError, match="reads vectors of 576, the model's are 32 wide"):
        ModelEngine(model, saes=[_sae(576, 1, "wide")])
    sae = _sae(32, 1, "r1").with_labels({0: "zero"})
    engine = ModelEngine(model, saes=[sae], sae_k=6)
    assert engine.describe()["saes"] == ["r1"]
    store = llmri.open_store(str(tmp_path / "live.zarr"), create=True)
    settings = {"max_new_tokens": 3, "temperature": 0.0, "top_p": 1.0, "seed": 0, "signals": None, "reducer": "random"}
    ids = []
    for turn in ("hi", "again"):
        st = engine.open([{"role": "user", "content": turn}], settings, store, {})
        for _ in st:
            pass
        ids.append(st.session_id)
    for sid in ids:
        s = store.session(sid)
        f = s.sae("r1")
        assert f.ids.shape == (len(s), 6) and f.labels == {0: "zero"}
        ref = copy.deepcopy(model.model)  # HF's own hidden states, on a copy
        with torch.inference_mode():
            out = ref(torch.tensor([s.tokens.ids.tolist()]), output_hidden_states=True, use_cache=False)
        want, values = sae.top_k(out.hidden_states[2][0], 6)
        assert (f.ids == want.numpy()).all()
        np.testing.assert_allclose(f.values.astype(np.float32), values.float().numpy(), rtol=2e-3, atol=2e-3)
