"""The data-science stack: every stored array is named (xarray opens a store without llmri),
Session.to_xarray() / tokens_df(), and upgrade-store for stores written before the names."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import llmri
from llmri import MissingExtraError
from llmri.cli import main as cli_main
from llmri.store.zarr import ZarrFrameStore
from llmri.store.zarr.upgrade import upgrade_store
from llmri.testing.frames import base_meta, make_frame

xr = pytest.importorskip("xarray")
pytest.importorskip("dask")
pytest.importorskip("pandas")

#: A store written by llmri before arrays had dimension_names (tests/data/make_unnamed_store.py).
OLD_STORE = Path(__file__).parents[1] / "data" / "store-before-dimension-names"
OLD_SID = "20261101-120000-aaaaaa"

#: docs/FORMAT.md, "Axes": the dimension_names of every array a session holds.
DOCUMENTED = {
    "frames/{s}": ["token", "layer", "tile_y", "tile_x"],
    "frames/layer": ["layer"],
    "stats/{s}/norm": ["token", "layer"],
    "stats/{s}/sparsity": ["token", "layer"],
    "stats/{s}/layer": ["layer"],
    "tokens/ids": ["token"],
    "tokens/text": ["token"],
    "tokens/role": ["token"],
    "tokens/logprob": ["token"],
    "tokens/entropy": ["token"],
    "tokens/top_ids": ["token", "rank"],
    "tokens/top_probs": ["token", "rank"],
    "tokens/top_texts": ["token", "rank"],
}


def array_docs(session_dir: Path) -> dict[str, dict]:
    """``{path in the session: zarr.json}`` of every array below ``session_dir``."""
    out = {}
    for p in sorted(session_dir.rglob("zarr.json")):
        doc = json.loads(p.read_text())
        if doc["node_type"] == "array":
            out[p.parent.relative_to(session_dir).as_posix()] = doc
    return out


def expected_names(signals: list[str]) -> dict[str, list[str]]:
    out = {}
    for pattern, names in DOCUMENTED.items():
        if not signals and not pattern.startswith("tokens/"):
            continue
        for s in signals if "{s}" in pattern else [None]:
            out[pattern.format(s=s)] = names
    return out


@pytest.fixture(scope="module")
def captured(tmp_path_factory, synthetic_model):
    """A real capture (synthetic model) into a store on disk: (store path, the returned session)."""
    path = tmp_path_factory.mktemp("xr") / "run.zarr"
    sess = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=25, store=path)
    return path, sess


# -- the names on disk -----------------------------------------------------------------------------


def test_every_array_carries_the_documented_dimension_names(captured, tmp_path):
    path, sess = captured
    docs = array_docs(path / "sessions" / sess.id)
    assert {k: d["dimension_names"] for k, d in docs.items()} == expected_names(sess.signals)
    # the reducer's arrays: each its own axes, so no two arrays of the group clash
    store = ZarrFrameStore(str(tmp_path / "s.zarr"), create=True)
    state = {"resid.mean": np.zeros((4, 8)), "resid.n_samples": np.array([3]), "scalar": np.float32(2)}
    store.create_session(base_meta(), state).close()
    (sid,) = store.session_ids()
    docs = array_docs(tmp_path / "s.zarr" / "sessions" / sid)
    assert docs["reducer_state/resid.mean"]["dimension_names"] == ["resid.mean_dim_0", "resid.mean_dim_1"]
    assert docs["reducer_state/resid.n_samples"]["dimension_names"] == ["resid.n_samples_dim_0"]
    assert "dimension_names" not in docs["reducer_state/scalar"]  # 0-d: no axes (zarr omits the key)
    # a chat-only session: the token table only, no coordinate arrays
    store.create_session({"signals": [], "layers": [], "tile": [0, 0]}).close()
    chat = [s for s in store.session_ids() if s != sid][0]
    assert set(array_docs(tmp_path / "s.zarr" / "sessions" / chat)) == set(expected_names([]))


def test_a_signal_cannot_be_called_layer(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "s.zarr"), create=True)
    with pytest.raises(llmri.StoreError, match="bad signal names"):
        store.create_session({"signals": ["layer"], "layers": ["a"], "tile": [1, 1]})


# -- xarray opens a store with no llmri importable ---------------------------------------------------

XARRAY_READER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [sys.argv[1]]  # the site-packages, without llmri (python -I -S: no .pth files)
    try:
        import llmri
    except ImportError:
        pass
    else:
        raise SystemExit(f"llmri is importable: {llmri.__file__}")
    import numpy as np, xarray as xr

    store, sid, out = sys.argv[2], sys.argv[3], sys.argv[4]
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    s = tree["sessions"][sid]
    n = s.attrs["n_committed"]
    frames = xr.open_zarr(f"{store}/sessions/{sid}/frames", consolidated=False)
    tokens = xr.open_dataset(store, engine="zarr", group=f"sessions/{sid}/tokens", consolidated=False, chunks=None)
    stats = xr.open_zarr(store, group=f"sessions/{sid}/stats/resid", consolidated=False)
    assert dict(frames.resid.sizes) == {"token": n, "layer": 6, "tile_y": 16, "tile_x": 16}, frames.resid.sizes
    assert tokens.top_ids.dims == ("token", "rank") and stats.norm.dims == ("token", "layer")
    assert s["frames"].to_dataset().resid.dims == frames.resid.dims
    layer = str(frames.layer.values[2])
    np.savez(
        out,
        resid=frames.resid.values,
        mlp=s["frames"]["mlp"].values,
        layer2=frames.resid.sel(layer=layer).isel(token=slice(3, 9)).values,
        layers=np.array([str(x) for x in frames.layer.values]),
        norm=stats.norm.values,
        sparsity=tree[f"sessions/{sid}/stats/attn/sparsity"].values,
        ids=tokens.ids.values,
        text=np.array([str(x) for x in tokens.text.values]),
        role=np.array([str(x) for x in tokens.role.values]),
        top_probs=tokens.top_probs.values,
        imported=np.array(sorted(m for m in sys.modules if m.split(".")[0] == "llmri")),
    )
    """
)


def site_without_llmri(where: Path) -> Path:
    """A folder of links to everything in this interpreter's site-packages but llmri itself (its
    package, its metadata, the editable install's path file and finder), whatever way it is installed."""
    where.mkdir()
    for sp in [*site.getsitepackages(), site.getusersitepackages()]:
        if not os.path.isdir(sp):
            continue
        for name in os.listdir(sp):
            lower = name.lower()
            if lower.startswith(("llmri", "__editable__")) or lower.endswith(".pth") or (where / name).exists():
                continue
            (where / name).symlink_to(os.path.join(sp, name))
    return where


@pytest.mark.slow
def test_xarray_opens_a_store_without_llmri(captured, tmp_path):
    path, sess = captured
    script = tmp_path / "reader.py"
    script.write_text(XARRAY_READER)
    out = tmp_path / "out.npz"
    sites = site_without_llmri(tmp_path / "site")
    cmd = [sys.executable, "-I", "-S", str(script), str(sites), str(path), sess.id, str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as z:
        assert z["imported"].tolist() == []
        np.testing.assert_array_equal(z["resid"], sess.frames("resid"))
        np.testing.assert_array_equal(z["mlp"], sess.frames("mlp"))
        np.testing.assert_array_equal(z["layer2"], sess.frames("resid")[3:9, 2])
        assert z["layers"].tolist() == sess.layers
        np.testing.assert_array_equal(z["norm"], sess.stats("resid")[0])
        np.testing.assert_array_equal(z["sparsity"], sess.stats("attn")[1])
        np.testing.assert_array_equal(z["ids"], sess.tokens.ids)
        assert z["text"].tolist() == sess.tokens.text and z["role"].tolist() == sess.tokens.role
        np.testing.assert_array_equal(z["top_probs"], sess.tokens.top_probs)


def test_the_reader_cannot_import_llmri(tmp_path):
    """The isolation the test above relies on: llmri is importable here, not in the child."""
    sites = site_without_llmri(tmp_path / "site")
    code = f"import sys; sys.path[:0] = [{str(sites)!r}]; import zarr, xarray\nimport llmri"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "No module named 'llmri'" in done.stderr, done.stderr[-2000:]


# -- Session.to_xarray() and tokens_df() --------------------------------------------------------------


def check_dataset(ds, sess) -> None:
    """``ds`` holds exactly what the reader ``sess`` returns."""
    n = len(sess)
    assert dict(ds.sizes) == {"token": n, "layer": len(sess.layers), "tile_y": 16, "tile_x": 16, "rank": 5}
    assert ds.layer.values.tolist() == sess.layers and ds.token.values.tolist() == list(range(n))
    assert ds.text.values.tolist() == sess.tokens.text and ds.role.values.tolist() == sess.tokens.role
    for s in sess.signals:
        assert ds[s].dims == ("token", "layer", "tile_y", "tile_x") and ds[s].dtype == np.float16
        np.testing.assert_array_equal(ds[s].values, sess.frames(s))
        np.testing.assert_array_equal(ds[f"{s}_norm"].values, sess.stats(s)[0])
        np.testing.assert_array_equal(ds[f"{s}_sparsity"].values, sess.stats(s)[1])
    t = sess.tokens
    np.testing.assert_array_equal(ds.token_id.values, t.ids)
    np.testing.assert_array_equal(ds.logprob.values, t.logprob)
    np.testing.assert_array_equal(ds.entropy.values, t.entropy)
    np.testing.assert_array_equal(ds.top_ids.values, t.top_ids)
    np.testing.assert_array_equal(ds.top_probs.values, t.top_probs)
    texts = [
        [x for x, i in zip(row, ids, strict=True) if i >= 0]
        for row, ids in zip(ds.top_texts.values, t.top_ids, strict=True)
    ]
    assert texts == [list(r) for r in t.top_texts]
    assert ds.attrs["id"] == sess.id and ds.attrs["signals"] == sess.signals


def test_to_xarray_of_a_memory_and_a_zarr_session(captured):
    path, mem = captured
    z = llmri.open_store(path).session(mem.id)
    a, b = mem.to_xarray(), z.to_xarray()
    check_dataset(a, mem)
    check_dataset(b, z)
    xr.testing.assert_equal(a, b.compute())
    # named slicing: one layer's tiles over the generated tokens
    gen = b.resid.sel(layer="layers.3").where(b.role == "generated", drop=True)
    np.testing.assert_array_equal(gen.values, mem.frames("resid")[np.array(mem.tokens.role) == "generated", 3])
    with pytest.raises(ValueError, match="read-only"):
        a.resid.values[0, 0, 0, 0] = 1  # a view of what the session holds, not a copy to scribble on


def test_zarr_to_xarray_is_lazy(captured, monkeypatch):
    """No data variable is read until computed (the text and role coordinates are), and a slice
    reads only its chunks."""
    from llmri.store.zarr.nofollow import NoFollowLocalStore

    path, mem = captured
    reads: list[str] = []
    get = NoFollowLocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(NoFollowLocalStore, "get", counting_get)
    z = llmri.open_store(path).session(mem.id)
    ds = z.to_xarray()
    chunks = sorted(k.split(f"{mem.id}/")[1] for k in reads if "/c/" in k)
    assert chunks == ["tokens/role/c/0", "tokens/text/c/0"] and len(z) > 40
    for name in ["resid", "resid_norm", "mlp_sparsity", "token_id", "logprob", "top_ids", "top_texts"]:
        assert type(ds[name].data).__module__.startswith("dask"), name
    assert ds.resid.chunks[0][0] == 16  # one dask chunk per stored chunk
    reads.clear()
    part = ds.resid.isel(token=slice(20, 30), layer=1).values
    np.testing.assert_array_equal(part, mem.frames("resid")[20:30, 1])
    assert sorted(k.split(f"{mem.id}/")[1] for k in reads) == ["frames/resid/c/1/0/0/0"]


def test_to_xarray_of_a_recording_session_holds_committed_rows_only(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True, background=False)
    w = store.create_session(base_meta())
    w.commit_every, w.commit_seconds = 10_000, 10_000.0
    for i in range(20):
        w.append(make_frame(i))
    w.commit()
    w.append(make_frame(20))  # pending, not committed
    ds = store.session(w.id).to_xarray()
    assert ds.sizes["token"] == 20 and ds.sizes["tile_y"] == 3 and ds.sizes["layer"] == 4
    np.testing.assert_array_equal(ds.mlp.values, np.stack([make_frame(i).tiles["mlp"] for i in range(20)]))
    assert ds.attrs["status"] == "recording"
    w.close()


def test_chat_only_session_to_xarray(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True)
    with store.create_session(base_meta([])) as w:
        for i in range(3):
            w.append(make_frame(i, []))
    ds = store.session(w.id).to_xarray()
    assert set(ds.data_vars) == {"token_id", "logprob", "entropy", "top_ids", "top_probs", "top_texts"}
    assert "layer" not in ds.dims and ds.sizes["token"] == 3


def test_tokens_df(captured):
    path, mem = captured
    df = llmri.open_store(path).session(mem.id).tokens_df()
    assert df.equals(mem.tokens_df())
    assert df.index.name == "token" and len(df) == len(mem)
    assert list(df.columns) == ["id", "text", "role", "logprob", "entropy", "top_ids", "top_probs", "top_texts"]
    assert "".join(df.text[(df.role == "generated") & ~df.id.isin(mem.meta["special_ids"])]) == mem.text
    assert df.top_ids.iloc[0] == [] and df.top_ids.iloc[5] == list(mem.tokens[5].top_ids)
    assert df.top_texts.iloc[5] == list(mem.tokens[5].top_texts)


@pytest.mark.parametrize("missing", ["xarray", "pandas", "dask.array"])
def test_a_missing_extra_names_the_install(captured, monkeypatch, missing):
    path, mem = captured
    monkeypatch.setitem(sys.modules, missing, None)
    z = llmri.open_store(path).session(mem.id)
    call = z.tokens_df if missing == "pandas" else z.to_xarray
    with pytest.raises(MissingExtraError, match=r"pip install 'llmri\[xarray\]'"):
        call()


@pytest.mark.slow
def test_real_model_session_in_xarray(tmp_path, real_model):
    path = tmp_path / "real.zarr"
    sess = llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=8, store=path)
    z = llmri.open_store(path).session(sess.id)
    ds = z.to_xarray()
    assert dict(ds.resid.sizes) == {"token": len(sess), "layer": 30, "tile_y": 16, "tile_x": 16}
    np.testing.assert_array_equal(ds.resid.sel(layer=sess.layers[29]).values, sess.frames("resid")[:, 29])
    # docs/FORMAT.md: a special token of the prompt carries its literal text
    first = ds.isel(token=0)
    assert int(first.token_id) in sess.meta["special_ids"] and str(first.text.values) == "<|im_start|>"
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    frames = tree[f"sessions/{sess.id}/frames"].to_dataset()
    np.testing.assert_array_equal(frames.attn.values, sess.frames("attn"))
    assert frames.layer.values.tolist() == sess.layers


# -- upgrade-store ----------------------------------------------------------------------------------


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def old_store(tmp_path) -> Path:
    path = tmp_path / "old.zarr"
    shutil.copytree(OLD_STORE, path)
    return path


def test_old_store_opens_in_llmri_and_not_in_xarray(tmp_path):
    path = old_store(tmp_path)
    s = llmri.open_store(path).session(OLD_SID)
    assert len(s) == 20 and s.signals == ["resid", "mlp"]
    np.testing.assert_array_equal(s.frames("mlp")[7], make_frame(7).tiles["mlp"])
    assert s.to_xarray().resid.shape == (20, 4, 3, 5)  # to_xarray needs no names on disk
    with pytest.raises(KeyError, match="dimension_names"):
        xr.open_zarr(path / "sessions" / OLD_SID / "frames", consolidated=False)


def test_upgrade_store_names_every_array_as_the_writer_does(tmp_path, capsys):
    path = old_store(tmp_path)
    before = llmri.open_store(path).session(OLD_SID).to_xarray().compute()
    assert cli_main(["upgrade-store", str(path)]) == 0
    assert "upgraded 20261101-120000-aaaaaa" in capsys.readouterr().out
    # what today's writer writes for the same rows, file for file
    fresh = ZarrFrameStore(str(tmp_path / "new.zarr"), create=True, background=False)
    old = llmri.open_store(path).session(OLD_SID)
    with fresh.create_session(dict(base_meta(old.signals)), old.reducer_state) as w:
        for i in range(20):
            w.append(make_frame(i, old.signals, "prompt" if i < 8 else "generated"))
    ours, theirs = files(path / "sessions" / OLD_SID), files(tmp_path / "new.zarr" / "sessions" / w.id)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        if key != "zarr.json":  # the session group: another id, time and writer
            assert ours[key] == theirs[key], key
    xr.testing.assert_identical(llmri.open_store(path).session(OLD_SID).to_xarray().compute(), before)
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert tree[f"sessions/{OLD_SID}/frames"].to_dataset().resid.dims == ("token", "layer", "tile_y", "tile_x")
    # a second run finds nothing to do
    assert cli_main(["upgrade-store", str(path)]) == 0
    assert "2 sessions already current" in capsys.readouterr().out


def test_info_on_an_old_store_points_at_upgrade_store_in_one_line(tmp_path, capsys):
    path = old_store(tmp_path)
    for argv in (["info", str(path)], ["info", str(path), OLD_SID], ["info", "--json", str(path)]):
        assert cli_main(argv) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("llmri info: 2 sessions were written before"), err
        assert f"`llmri upgrade-store {path}`" in err[0]
    assert cli_main(["upgrade-store", str(path)]) == 0
    capsys.readouterr()
    assert cli_main(["info", str(path)]) == 0
    assert capsys.readouterr().err == ""  # once upgraded, nothing to say


def test_upgrade_store_dry_run_writes_nothing(tmp_path, capsys):
    path = old_store(tmp_path)
    assert cli_main(["upgrade-store", "--dry-run", str(path)]) == 0
    assert "would upgrade 20261101-120000-aaaaaa (22 files)" in capsys.readouterr().out
    assert not (path / "sessions" / OLD_SID / "frames" / "layer").exists()
    assert "dimension_names" not in (path / "sessions" / OLD_SID / "frames" / "resid" / "zarr.json").read_text()


def test_upgrade_store_refuses_a_recording_session(tmp_path, capsys):
    path = old_store(tmp_path)
    w = ZarrFrameStore(str(path), background=False).create_session(base_meta())
    w.append(make_frame(0))
    w.commit()
    assert cli_main(["upgrade-store", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"session {w.id} is recording: not upgraded" in captured.err
    assert "upgraded 20261101-120000-aaaaaa" in captured.out  # the others are
    w.close()
    assert cli_main(["upgrade-store", str(path)]) == 0


def test_an_interrupted_upgrade_is_finished_by_running_it_again(tmp_path, monkeypatch):
    from llmri.store.zarr import nofollow

    path = old_store(tmp_path)
    real = nofollow.write_file
    calls = []

    def failing(root, key, *args, **kw):
        calls.append(key)
        if len(calls) == 7:
            raise OSError("disk full")
        real(root, key, *args, **kw)

    monkeypatch.setattr(nofollow, "write_file", failing)
    with pytest.raises(llmri.StoreError, match="upgrade failed: disk full"):
        upgrade_store(str(path))
    monkeypatch.setattr(nofollow, "write_file", real)
    half = llmri.open_store(path).session(OLD_SID)  # half upgraded: llmri reads it as before
    np.testing.assert_array_equal(half.frames("resid")[3], make_frame(3).tiles["resid"])
    assert not list(path.rglob("*.partial"))
    assert cli_main(["upgrade-store", str(path)]) == 0
    clean = old_store(tmp_path / "clean")
    assert cli_main(["upgrade-store", str(clean)]) == 0
    assert files(path) == files(clean)


def test_upgrade_store_leaves_an_unknown_array_and_says_so(tmp_path, capsys):
    import zarr

    path = old_store(tmp_path)
    zarr.create_array(str(path), name=f"sessions/{OLD_SID}/notes/mine", shape=(3,), dtype="i4")
    assert cli_main(["upgrade-store", str(path)]) == 1
    assert "notes/mine: not an array llmri writes" in capsys.readouterr().err
    assert "dimension_names" in (path / "sessions" / OLD_SID / "tokens" / "ids" / "zarr.json").read_text()
