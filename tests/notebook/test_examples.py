"""The example notebooks (examples/*.ipynb) run in a real Jupyter kernel (nbclient), this venv's python:
each notebook asserts on its own results in its cells, and these tests on the outputs it left."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("anywidget")

from notebook_helpers import EXAMPLES, KERNEL, jupyter_env  # noqa: E402

pytestmark = pytest.mark.slow

WIDGET = "application/vnd.jupyter.widget-view+json"


def run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """Execute examples/``name`` in a fresh kernel (cwd: a temp dir); its code cells, with outputs."""
    for key, value in jupyter_env(tmp_path / "jupyter").items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}, allow_errors=False
    )
    client.execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def widgets(cell) -> list[dict]:
    return [o["data"] for o in cell.outputs if o.output_type == "display_data" and WIDGET in o.get("data", {})]


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(
        [
            "quickstart.ipynb",
            "compare_prompts.ipynb",
            "xarray_store.ipynb",
            "interventions.ipynb",
            "study.ipynb",
            "sae_features.ipynb",
        ]
    )
    for p in EXAMPLES.glob("*.ipynb"):  # committed without outputs: what a reader runs is what is tested
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), p.name


def test_quickstart(tmp_path, monkeypatch):
    cells = run("quickstart.ipynb", tmp_path, monkeypatch)
    capture, show, scrub, stream, wait = cells
    assert "tokens, 30 layers, signals ['resid', 'attn', 'mlp']" in text(capture)
    assert "answer: " in text(capture)
    # a capture in a notebook shows tqdm's bar with its rate (beside transformers' own loading bar);
    # tqdm writes a rate under one token a second as seconds per token ("2.14s/tok": a loaded machine)
    bars = [w["text/plain"] for w in widgets(capture)]
    assert any(b.startswith("capture:") and ("tok/s" in b or "s/tok" in b) for b in bars), bars
    (viewer,) = widgets(show)
    assert viewer["text/plain"].startswith("llmri viewer: s0/")
    assert viewer[WIDGET]["model_id"]
    assert text(scrub).startswith("token 40: ")
    assert len(widgets(stream)) == 1 and text(wait).startswith("complete ")


def test_compare_prompts(tmp_path, monkeypatch):
    capture, show, diff, switch = run("compare_prompts.ipynb", tmp_path, monkeypatch)
    assert len(widgets(show)) == 1
    assert "first token that differs: 3 ' France' vs ' Italy'" in text(diff)
    assert text(switch).startswith("s0/")


def test_xarray_store(tmp_path, monkeypatch):
    record, open_, energy = run("xarray_store.ipynb", tmp_path, monkeypatch)
    assert "('token', 'layer', 'tile_y', 'tile_x')" in text(open_)
    assert "ids" in text(energy) and "text" in text(energy)
    assert os.listdir(tmp_path / "work") == []  # the store went to its own temp dir


def test_interventions(tmp_path, monkeypatch):
    direction, steer, compare, show, patching, gguf = run("interventions.ipynb", tmp_path, monkeypatch)
    assert text(direction).startswith("Direction(mean_diff, layers 12, d_model 576")
    # p(" Paris") rises with the scale (the notebook asserts it; here: it printed all three)
    p = [float(x) for x in re.findall(r"p\(' Paris'\) = ([0-9.]+)", text(steer))]
    assert len(p) == 3 and p == sorted(p) and p[0] > 0, text(steer)
    assert text(compare).startswith("first token that differs: ")
    (viewer,) = widgets(show)
    assert viewer["text/plain"].startswith("llmri viewer: ") and text(show).startswith("steer [12]")
    assert "logit diff: clean " in text(patching) and "' Italy'" in text(patching)
    assert text(gguf).endswith("baseline: True | same tokens as the steered run: True\n")
    assert os.listdir(tmp_path / "work") == []  # the .gguf went to its own temp dir


def test_study(tmp_path, monkeypatch):
    write, first, rest, xarray, tokens, stats = run("study.ipynb", tmp_path, monkeypatch)
    assert text(write).startswith("24 prompts; ")
    assert text(first).startswith("12 captured, 0 skipped, 48 tokens in ")
    assert text(rest) == "12 captured, 12 already complete\n"  # the first half was skipped
    assert text(xarray).startswith("{'session': 24, ") and "mean resid norm, layers 0-29:" in text(xarray)
    assert "'food'" in text(tokens) and "'geography'" in text(tokens) and "'science'" in text(tokens)
    assert text(stats).startswith("tokens per layer: ")
    assert os.listdir(tmp_path / "work") == []  # the study went to its own temp dir


def test_sae_features(tmp_path, monkeypatch):
    load, features, activation, steer = run("sae_features.ipynb", tmp_path, monkeypatch)
    assert text(load) == "<SAE smollm2-resid15 topk k=8 576->128 resid15 (saelens)>\n"
    assert "| ids (11, 8) int32 |" in text(features) and "strongest at ' Paris': " in text(features)
    assert len(text(activation).splitlines()) == 11  # one line per token
    before, after = (float(x) for x in re.search(r"mean activation: ([0-9.]+) -> ([0-9.]+)", text(steer)).groups())
    assert after > before
