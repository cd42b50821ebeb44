"""A small SAE trained by llmri's own loop, written as a SAELens directory and read back by load_sae;
feature labels (Neuronpedia's export shapes, a plain {index: text}) read offline and kept in a
session's record; the bundled model's demo SAE."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from helpers import tiny_model  # noqa: E402
from llmri import SAEError, load_sae  # noqa: E402
from llmri.readouts.sae import SAE  # noqa: E402
from llmri.readouts.sae.train import save_sae, top_token_labels, train_sae  # noqa: E402


def sparse_data(n: int = 2000, d: int = 32, atoms: int = 48, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Vectors that are sums of ``active`` of ``atoms`` unit directions with positive weights."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(atoms, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    ids = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    w = torch.rand(n, active, generator=g) * 4 + 1
    return (w[..., None] * dirs[ids]).sum(1) + 0.5


def test_train_sae_reconstructs_and_round_trips_through_saelens_files(tmp_path) -> None:
    x = sparse_data()
    sae = train_sae(x, d_sae=64, k=4, steps=300, layer=1, signal="resid", name="toy", model_name="tiny-llama-0")
    fvu, cos = sae.reconstruction(x)
    print(f"toy SAE: mean FVU {float(fvu.mean()):.3f}, cosine {float(cos.mean()):.3f}")
    assert float(fvu.mean()) < 0.15 and (sae.encode(x) > 0).sum(-1).max() <= 4
    labels = {0: "zero", 5: "five"}
    out = save_sae(sae, tmp_path / "toy", labels=labels)
    assert json.loads((out / "labels.json").read_text()) == [
        {"index": "0", "description": "zero"},
        {"index": "5", "description": "five"},
    ]
    back = load_sae(out, labels=out / "labels.json")
    site = (back.source_format, back.architecture, back.k, back.layer, back.signal)
    assert site == ("saelens", "topk", 4, 1, "resid")
    assert back.model_name == "tiny-llama-0" and back.labels == labels
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    assert back.sha256() == sae.sha256()


def test_top_token_labels_name_the_tokens_a_feature_fires_on() -> None:
    acts = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert top_token_labels(acts, ["a", " b", "a", "c"]) == {0: "'a', ' b'"}


@pytest.fixture
def toy_sae() -> SAE:
    w = torch.eye(32)
    return SAE(W_enc=w, b_enc=torch.zeros(32), W_dec=w, b_dec=torch.zeros(32), architecture="relu", name="toy",
               source_format="test", path="<toy>", layer=1, signal="resid")  # fmt: skip


def test_labels_in_neuronpedia_shapes_and_plain_json(tmp_path, toy_sae) -> None:
    np_export = [
        {"modelId": "m", "layer": "1-res", "index": "3", "description": " dogs", "explanationModelName": "x"},
        {"modelId": "m", "layer": "1-res", "index": "3", "description": "a second one"},
        {"modelId": "m", "layer": "1-res", "index": "7", "description": "cats"},
    ]
    (tmp_path / "np.json").write_text(json.dumps(np_export))
    assert toy_sae.with_labels(tmp_path / "np.json").labels == {3: "dogs", 7: "cats"}
    lines = "\n".join(json.dumps(r) for r in np_export).encode()
    (tmp_path / "batch-0.jsonl.gz").write_bytes(gzip.compress(lines))
    assert toy_sae.with_labels(tmp_path / "batch-0.jsonl.gz").labels == {3: "dogs", 7: "cats"}
    (tmp_path / "plain.json").write_text(json.dumps({"1": "one", "31": "last"}))
    assert toy_sae.with_labels(str(tmp_path / "plain.json")).labels == {1: "one", 31: "last"}
    assert toy_sae.with_labels({2: "two"}).labels == {2: "two"}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"32": "past the end"}', "label index '32' is not a feature of 0-31"),
        ('[{"description": "no index"}]', "entry 0 is not an object with 'index'"),
        ('{"x": "y"}', "label index 'x' is not a whole number"),
        ("not json", "not a readable JSON labels file"),
        ('"a string"', "labels must be a JSON list"),
    ],
)
def test_bad_labels_are_one_line(tmp_path, toy_sae, content, error) -> None:
    (tmp_path / "l.json").write_text(content)
    with pytest.raises(SAEError, match=error) as e:
        toy_sae.with_labels(tmp_path / "l.json")
    assert "\n" not in str(e.value) and "l.json" in str(e.value)
    with pytest.raises(SAEError, match="missing"):
        toy_sae.with_labels(tmp_path / "nope.json")


def test_a_saved_session_shows_the_labels(tmp_path, toy_sae) -> None:
    toy_sae.with_labels({0: "first", 9: "ninth"})
    s = llmri.capture(tiny_model(), "hi", saes=[toy_sae], max_new_tokens=2, store=str(tmp_path / "st"), sae_k=4)
    assert s.sae("toy").labels == {0: "first", 9: "ninth"}
    z = llmri.open_store(str(tmp_path / "st")).session(s.id)
    f = z.sae("toy")
    assert f.labels == {0: "first", 9: "ninth"} and f.label(9) == "ninth" and f.label(3) == ""
    assert z.meta["sae"]["saes"][0]["labels"] == {"0": "first", "9": "ninth"}
    np.testing.assert_array_equal(f.ids, s.sae("toy").ids)


@pytest.mark.slow
def test_the_bundled_models_demo_sae(real_model) -> None:
    from llmri.capture.demosae import bundled_sae

    sae = bundled_sae(real_model)  # trained once, then read from llmri's cache
    assert (sae.d_in, sae.d_sae, sae.k, sae.layer, sae.signal) == (576, 128, 8, 15, "resid")
    assert sae.source_format == "saelens" and len(sae.labels) > 100
    s = llmri.capture(real_model, "The capital of France is Paris.", saes=[sae], max_new_tokens=4, sae_k=8)
    f = s.sae(sae.name)
    print(f"demo SAE on a new prompt: FVU {f.fvu[1:].mean():.3f}, cosine {f.cosine[1:].mean():.3f}")
    assert (f.l0 == 8).all() and float(f.fvu[1:].mean()) < 0.5
    paris = s.tokens.text.index(" Paris")
    assert any("Paris" in sae.labels.get(int(i), "") for i in f.ids[paris])
