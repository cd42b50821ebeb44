"""The example notebooks (examples/*.ipynb) run in a real Jupyter kernel (nbclient), this venv's python:
each notebook asserts on its own results in its cells, and these tests on the outputs it left."""

from __future__ import annotations

import os
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
        ["quickstart.ipynb", "compare_prompts.ipynb", "xarray_store.ipynb"]
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
