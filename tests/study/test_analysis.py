"""A study as one lazy dataset: FrameStore.to_xarray() and tokens_df() over a store of a few hundred
small sessions (hand-made frames of different lengths, with prompt metadata as capture_many keeps
it), checked against the sessions read one by one."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import llmri
from llmri import StoreError
from llmri.store.zarr import ZarrFrameStore
from llmri.testing.frames import L, base_meta, make_frame

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")

pytestmark = pytest.mark.slow  # a few hundred sessions written and read

N_SESSIONS = 200
SIGNALS = ["resid", "mlp"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("analysis") / "study.zarr"
    store = ZarrFrameStore(str(path), create=True, background=False)
    rng = np.random.default_rng(7)
    lengths = {}
    for k in range(N_SESSIONS):
        meta = base_meta(SIGNALS)
        meta["study"] = {"id": f"p{k}", "key": f"id:p{k}", "metadata": {"topic": "ab"[k % 2], "level": k % 5}}
        w = store.create_session(meta)
        n = int(rng.integers(1, 12))
        for i in range(n):
            w.append(make_frame(i, SIGNALS, role="prompt" if i < 2 else "generated"))
        w.close()
        lengths[w.id] = n
    return path, lengths


def test_a_study_as_one_lazy_dataset(study):
    path, lengths = study
    store = llmri.open_store(path)
    ds = store.to_xarray()
    longest = max(lengths.values())
    assert dict(ds.sizes)["session"] == N_SESSIONS and dict(ds.sizes)["token"] == longest
    assert dict(ds.sizes)["layer"] == L
    assert isinstance(ds["resid"].data, da.Array) and isinstance(ds["resid_norm"].data, da.Array)
    assert ds["length"].values.tolist() == [lengths[s] for s in ds["session"].values]

    # the reference: every session read by itself
    refs = {sid: store.session(sid) for sid in lengths}
    norms = np.concatenate([refs[sid].stats("resid")[0] for sid in lengths])  # [all tokens, layer]
    mean = ds["resid_norm"].mean(("session", "token"))  # NaN padding skipped
    np.testing.assert_allclose(mean.values, norms.mean(axis=0), rtol=1e-5)

    # padding: past a session's length, NaN / -1 / ""
    short = min(lengths, key=lengths.get)
    row = ds.sel(session=short)
    n = lengths[short]
    assert np.isnan(row["resid_norm"].values[n:]).all() and (row["token_id"].values[n:] == -1).all()
    assert list(row["text"].values[n:]) == [""] * (longest - n)
    np.testing.assert_array_equal(row["resid"].values[:n], refs[short].frames("resid"))
    assert list(row["text"].values[:n]) == refs[short].tokens.text

    # metadata as coordinates: select a part of the study
    a = ds.sel(session=ds["topic"] == "a")
    assert dict(a.sizes)["session"] == N_SESSIONS // 2 and set(a["topic"].values) == {"a"}
    assert sorted(ds["prompt_id"].values) == sorted(f"p{k}" for k in range(N_SESSIONS))
    by_level = ds["resid_norm"].mean(("token", "layer")).groupby("level").mean()
    assert sorted(by_level["level"].values.tolist()) == [0, 1, 2, 3, 4]


def test_the_norm_mean_reads_no_frame(study, tmp_path):
    """Lazy for real: with every frame chunk deleted after opening, the norms still compute."""
    import shutil

    path, lengths = study
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    ds = llmri.open_store(copy).to_xarray()
    chunks = [f for f in glob.glob(f"{copy}/sessions/*/frames/*/c/**", recursive=True) if os.path.isfile(f)]
    assert len(chunks) >= N_SESSIONS
    for f in chunks:
        os.remove(f)
    ref = llmri.open_store(path).to_xarray()
    np.testing.assert_array_equal(
        ds["mlp_norm"].max(("session", "token")).values, ref["mlp_norm"].max(("session", "token")).values
    )


def test_tokens_df_over_the_study(study):
    path, lengths = study
    store = llmri.open_store(path)
    df = store.tokens_df()
    assert len(df) == sum(lengths.values())
    assert list(df.index.names) == ["session", "token"]
    assert {"topic", "level", "prompt_id", "status", "text", "logprob"} <= set(df.columns)
    sid = next(iter(lengths))
    part = df.loc[sid]
    assert part["text"].tolist() == store.session(sid).tokens.text
    assert set(part["prompt_id"]) == {store.session(sid).meta["study"]["id"]}
    assert df.groupby("topic").size().sum() == len(df)


def test_sessions_of_another_layout_are_named(study, tmp_path):
    store = ZarrFrameStore(str(tmp_path / "mixed.zarr"), create=True, background=False)
    for signals in (["resid"], ["resid", "mlp"]):
        w = store.create_session(base_meta(signals))
        w.append(make_frame(0, signals))
        w.close()
    with pytest.raises(StoreError, match="laid out unlike"):
        store.to_xarray()
    one = store.to_xarray(sessions=[store.session_ids()[0]])
    assert dict(one.sizes)["session"] == 1
