"""The lens's token texts (``lens/top_text``): each top id's text, decoded once per id in the
capture, kept beside the ids in the memory and Zarr sessions, and absent (None) in a session
written before llmri recorded them, which still opens."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import llmri
from helpers import tiny_model
from llmri.backends.synthetic import ByteTokenizer
from llmri.models import LoadedModel
from llmri.render.export import export_json, export_npz

PROMPT = "Why is the sky blue?"


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model()


def _decoded(ids: np.ndarray) -> np.ndarray:
    tok = ByteTokenizer()
    return np.vectorize(lambda i: tok.decode([int(i)]), otypes=[object])(ids)


def test_memory_session_has_each_top_ids_text(tiny):
    s = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=5, ignore_eos=True, lens=True)
    lens = s.lens()
    assert s.meta["lens"]["texts"] is True
    assert lens.top_text is not None and lens.top_text.dtype == object
    assert lens.top_text.shape == lens.top_ids.shape
    np.testing.assert_array_equal(lens.top_text, _decoded(lens.top_ids))
    assert "top_text" in lens.arrays() and "top_text" in repr(lens)
    np.testing.assert_array_equal(s.lens(2, 4).top_text, lens.top_text[2:4])


def test_texts_are_decoded_once_per_id(tiny, monkeypatch):
    from collections import Counter

    from llmri.capture.codec import TextCodec

    calls: Counter[int] = Counter()
    misses: Counter[int] = Counter()
    real = TextCodec.piece

    def spy(self, token_id):  # noqa: ANN001, ANN202
        calls[int(token_id)] += 1
        if int(token_id) not in self._pieces:
            misses[int(token_id)] += 1
        return real(self, token_id)

    monkeypatch.setattr(TextCodec, "piece", spy)
    s = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=5, ignore_eos=True, lens=True)
    ids = s.lens().top_ids
    assert set(np.unique(ids).tolist()) <= set(misses)
    # the id -> text cache: each id decoded once; and asked once per distinct id of a step, not
    # once per entry
    assert max(misses.values()) == 1
    assert sum(calls.values()) < ids.size


def test_zarr_session_holds_the_texts(tiny, tmp_path):
    mem = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=5, ignore_eos=True, lens=True)
    st = llmri.stream(tiny, PROMPT, chat=False, max_new_tokens=5, ignore_eos=True, lens=True, store=tmp_path / "t.zarr")
    for _ in st:
        pass
    s = llmri.open_store(tmp_path / "t.zarr").session(st.session_id)
    got = s.lens()
    np.testing.assert_array_equal(got.top_text, mem.lens().top_text)
    assert all(type(x) is str for x in got.top_text.ravel())
    import zarr

    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")[f"sessions/{st.session_id}"]
    assert g["lens/top_text"].metadata.dimension_names == ("token", "layer", "rank")
    assert list(s.lens(1, 3).top_text.shape) == [2, 3, 5]
    # the exports carry them: npz without pickles, JSON as nested lists
    with np.load(export_npz(s, tmp_path / "s.npz")) as z:
        np.testing.assert_array_equal(z["lens_top_text"], got.top_text.astype(str))
    doc = json.loads(export_json(s, tmp_path / "s.json").read_text(encoding="utf-8"))
    assert doc["lens"]["top_text"][0] == got.top_text[0].tolist()


def test_a_session_recorded_without_texts_still_opens(tiny, tmp_path):
    mem = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=4, ignore_eos=True, lens=True)
    meta = copy.deepcopy(dict(mem.meta))
    meta["lens"] = {"k": 5, "signal": "resid"}  # what llmri wrote before top_text
    store = llmri.open_store(tmp_path / "old.zarr", create=True)
    with store.create_session(meta) as w:
        for i in range(len(mem)):
            w.append(mem.frame(i))
        sid = w.id
    s = llmri.open_store(tmp_path / "old.zarr").session(sid)
    lens = s.lens()
    assert lens.top_text is None and "top_text" not in lens.arrays()
    np.testing.assert_array_equal(lens.top_ids, mem.lens().top_ids)
    import zarr

    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="r")[f"sessions/{sid}"]
    assert "top_text" not in g["lens"]
    pytest.importorskip("xarray")
    pytest.importorskip("dask")
    assert "lens_top_text" not in s.to_xarray()
    ds = llmri.open_store(tmp_path / "old.zarr").session(sid).to_xarray()
    assert "lens_top_ids" in ds


def test_xarray_has_the_texts(tiny, tmp_path):
    pytest.importorskip("xarray")
    pytest.importorskip("dask")
    mem = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=3, ignore_eos=True, lens=True)
    ds = mem.to_xarray()
    assert ds["lens_top_text"].dims == ("token", "layer", "rank")
    np.testing.assert_array_equal(ds["lens_top_text"].values, mem.lens().top_text)
