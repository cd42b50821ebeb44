"""ZarrFrameStore only: the documented layout read with plain zarr, bad stores, liveness, two writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

import llmri
from helpers import one_line_error
from llmri import StoreError
from llmri.store.zarr import ZarrFrameStore
from llmri.testing.frames import base_meta, make_frame

PLAIN_READER = textwrap.dedent(
    """
    import sys
    sys.modules["llmri"] = None  # prove the reader needs no llmri
    import json, numpy as np, zarr

    root = zarr.open_group(sys.argv[1], mode="r")
    assert root.attrs["llmri"]["kind"] == "store" and root.attrs["llmri"]["format_version"] <= 1
    sid = sorted(root["sessions"].group_keys())[-1]
    s = root["sessions"][sid]
    n = s.attrs["n_committed"]
    meta = s.attrs["meta"]
    out = {"meta_json": np.array(json.dumps(meta)), "id": np.array(sid)}
    for sig in meta["signals"]:
        out["frames_" + sig] = s["frames/" + sig][:n]
        out["norm_" + sig] = s["stats/" + sig + "/norm"][:n]
        out["sparsity_" + sig] = s["stats/" + sig + "/sparsity"][:n]
    for name in ["ids", "logprob", "entropy", "top_ids", "top_probs"]:
        out[name] = s["tokens/" + name][:n]
    for name in ["text", "role"]:
        out[name] = np.array([str(t) for t in s["tokens/" + name][:n]])
    out["frame10"] = s["frames/resid"][10]
    ids = s["tokens/ids"][:n]
    out["generated"] = np.array("".join(
        str(t) for t, r, i in zip(s["tokens/text"][:n], s["tokens/role"][:n], ids)
        if str(r) == "generated" and int(i) not in meta["special_ids"]
    ))
    np.savez(sys.argv[2], **out)
    """
)


@pytest.mark.slow
def test_plain_zarr_reads_a_session_as_documented(tmp_path, synthetic_model):
    path = tmp_path / "run.zarr"
    sess = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=25, store=path)
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_READER)
    out = tmp_path / "plain.npz"
    subprocess.run([sys.executable, str(script), str(path), str(out)], check=True, timeout=120)
    with np.load(out) as z:
        assert str(z["id"]) == sess.id
        meta = json.loads(str(z["meta_json"]))
        assert meta["signals"] == sess.signals and meta["status"] == "complete"
        for sig in sess.signals:
            np.testing.assert_array_equal(z["frames_" + sig], sess.frames(sig))
            np.testing.assert_array_equal(z["norm_" + sig], sess.stats(sig)[0])
            np.testing.assert_array_equal(z["sparsity_" + sig], sess.stats(sig)[1])
        np.testing.assert_array_equal(z["ids"], sess.tokens.ids)
        np.testing.assert_array_equal(z["top_ids"], sess.tokens.top_ids)
        np.testing.assert_array_equal(z["logprob"], sess.tokens.logprob)
        assert z["text"].tolist() == sess.tokens.text and z["role"].tolist() == sess.tokens.role
        np.testing.assert_array_equal(z["frame10"], sess.frames("resid")[10])
        assert str(z["generated"]) == sess.text == "The sky is blue because a"


@pytest.mark.slow
def test_real_model_session_roundtrip(tmp_path, real_model, real_session):
    path = tmp_path / "real.zarr"
    s2 = llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=12, store=path)
    z = llmri.open_store(path).session(s2.id)
    assert z.status == "complete" and len(z) == len(real_session)
    assert z.text == real_session.text
    for sig in real_session.signals:
        np.testing.assert_array_equal(z.frames(sig), real_session.frames(sig))
    assert z.frames("resid").shape[1:] == (30, 16, 16)
    assert z.meta["model"]["name"] == "SmolLM2-135M-Instruct"


def test_frame_range_reads_only_its_chunks(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True)
    with store.create_session(base_meta()) as w:
        for i in range(100):
            w.append(make_frame(i))
    s = store.session(w.id)
    chunk_dir = tmp_path / "r.zarr" / "sessions" / w.id / "frames" / "resid" / "c"
    assert sorted(int(p.name) for p in chunk_dir.iterdir()) == list(range(7))  # 100 frames / 16
    # remove every chunk but the second: a range inside it still reads, so nothing else was loaded
    for p in chunk_dir.iterdir():
        if p.name != "1":
            import shutil

            shutil.rmtree(p)
    np.testing.assert_array_equal(
        s.frames("resid", 17, 30), np.stack([make_frame(i).tiles["resid"] for i in range(17, 30)])
    )


def test_partial_chunks_are_rewritten_whole(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True)
    w = store.create_session(base_meta())
    w.commit_every, w.commit_seconds = 10_000, 10_000.0
    want = []
    for n in (5, 9, 2, 20):  # commits at 5, 14, 16 and 36: the first chunk is written three times
        for _ in range(n):
            f = make_frame(len(want))
            want.append(f.tiles["mlp"])
            w.append(f)
        w.commit()
        np.testing.assert_array_equal(ZarrFrameStore(store.url).session(w.id).frames("mlp"), np.stack(want))
    w.close()
    arr = zarr.open_array(str(tmp_path / "r.zarr"), path=f"sessions/{w.id}/frames/mlp", mode="r")
    assert arr.shape == (36, 4, 3, 5)


def test_synchronous_writer_commits_every_16_frames(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True, background=False)
    w = store.create_session(base_meta())
    w.commit_every, w.commit_seconds = 16, 10_000.0
    for i in range(40):
        w.append(make_frame(i))
        assert len(store.session(w.id)) == (i + 1) // 16 * 16
    w.close()
    assert len(store.session(w.id)) == 40


def test_idle_writer_refreshes_its_heartbeat(tmp_path, monkeypatch):
    import llmri.store.zarr.writer as zmod

    monkeypatch.setattr(zmod, "HEARTBEAT_SECONDS", 0.2)
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True)
    w = store.create_session(base_meta())
    first = store.session(w.id).meta["writer"]["heartbeat"]
    deadline = time.monotonic() + 10
    while store.session(w.id).meta["writer"]["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.session(w.id).meta["writer"]["heartbeat"] > first
    w.close()


def test_background_write_error_is_raised(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True)
    w = store.create_session(base_meta())
    w._error = OSError("disk full")  # what the commit thread records when a write fails
    with pytest.raises(StoreError, match="write failed: disk full"):
        w.append(make_frame(0))
    with pytest.raises(StoreError, match="disk full"):
        w.close()


def test_reader_sees_only_committed_frames_while_writing(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True, background=False)
    w = store.create_session(base_meta())
    w.commit_every, w.commit_seconds = 16, 10_000.0
    reader = store.session(w.id)
    assert reader.status == "recording" and len(reader) == 0
    for i in range(20):
        w.append(make_frame(i))
    assert len(reader) == 0  # a snapshot until refreshed
    reader.refresh()
    assert len(reader) == 16 and reader.status == "recording"
    assert reader.frames("resid").shape[0] == 16 and len(reader.tokens) == 16
    w.close()
    reader.refresh()
    assert len(reader) == 20 and reader.status == "complete" and len(reader.tokens) == 20


def test_compression_option(tmp_path):
    zst = ZarrFrameStore(str(tmp_path / "z.zarr"), create=True, compress=True)
    with zst.create_session(base_meta()) as w:
        w.append(make_frame(0))
    meta = json.loads((tmp_path / "z.zarr" / "sessions" / w.id / "frames" / "resid" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "zstd"]
    np.testing.assert_array_equal(zst.session(w.id).frames("resid")[0], make_frame(0).tiles["resid"])


def test_frames_are_stored_raw_by_default(tmp_path):
    raw = ZarrFrameStore(str(tmp_path / "raw.zarr"), create=True)
    with raw.create_session(base_meta()) as w:
        for i in range(16):
            w.append(make_frame(i))
    meta = json.loads((tmp_path / "raw.zarr" / "sessions" / w.id / "frames" / "resid" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]
    chunk = tmp_path / "raw.zarr" / "sessions" / w.id / "frames" / "resid" / "c" / "0" / "0" / "0" / "0"
    assert chunk.stat().st_size == 16 * 4 * 3 * 5 * 2
    np.testing.assert_array_equal(raw.session(w.id).frames("resid", 15, 16)[0], make_frame(15).tiles["resid"])


def test_session_meta_is_stored_as_plain_json(tmp_path):
    store = ZarrFrameStore(str(tmp_path / "r.zarr"), create=True, background=False)
    w = store.create_session(base_meta())
    w.append(make_frame(0))
    w.update_meta(temperature=float("nan"), scales={"resid": np.array([0.5, np.inf], np.float32)}, size=np.int64(3))
    w.close()
    text = (tmp_path / "r.zarr" / "sessions" / w.id / "zarr.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in zarr.json"))["attributes"]["meta"]
    assert meta["temperature"] is None and meta["scales"] == {"resid": [0.5, None]} and meta["size"] == 3
    assert store.session(w.id).meta["scales"] == {"resid": [0.5, None]}
    w2 = store.create_session(base_meta())
    w2.update_meta(where=tmp_path)  # not a JSON value: the commit fails, saying why
    with pytest.raises(StoreError, match="write failed: .*PosixPath"):
        w2.close()


def _files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("route", ["fast", "through-zarr"])
def test_fast_path_writes_what_zarr_writes(tmp_path, monkeypatch, compress, route):
    """The writer encodes chunks and array metadata itself (llmri.store.zarr.internals). The same rows
    assigned with plain zarr must give the same files, byte for byte: a zarr upgrade that changes its
    encoding, its chunk keys or its metadata documents fails here first. ``through-zarr`` checks the
    writer's route for codec chains the fast path does not know (zarr encodes each chunk)."""
    from llmri.store.base import readout_layout
    from llmri.store.zarr import internals
    from llmri.store.zarr.columns import (
        INITIAL_ROWS,
        column_compressors,
        column_specs,
        coordinate_arrays,
        fill_value,
        frame_rows,
    )

    if route == "through-zarr":
        monkeypatch.setattr(internals, "_fast_encoder", lambda metadata: None)
    internals.column_format.cache_clear()
    try:
        n = INITIAL_ROWS + 40  # the arrays grow once; commits end inside chunks, whose tails are rewritten
        # with every readout array too (lens, attention), hand-made rows padded as the writer pads them
        frames = [make_frame(i, role="prompt" if i < 30 else "generated", readouts=True) for i in range(n)]
        store = ZarrFrameStore(str(tmp_path / "llmri.zarr"), create=True, compress=compress, background=False)
        w = store.create_session(base_meta(readouts=True))
        w.commit_every, w.commit_seconds = 100, 10_000.0
        for f in frames:
            w.append(f)
        w.close()
        assert all(c[0].fast == (route == "fast") for c in w._columns.values())
    finally:
        internals.column_format.cache_clear()

    session = f"sessions/{w.id}"
    ours = _files(tmp_path / "llmri.zarr" / session)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    attrs = json.loads(ours["zarr.json"])["attributes"]
    group = plain.create_group(session, attributes=attrs)
    meta = base_meta(readouts=True)
    rows = [frame_rows(f, meta["signals"], 5, readout_layout(meta)) for f in frames]
    for name, spec in column_specs(meta).items():
        arr = group.create_array(
            name,
            shape=(n, *spec.row_shape),
            chunks=(spec.chunk, *spec.row_shape),
            dtype=spec.dtype,
            fill_value=fill_value(spec.dtype),
            compressors=column_compressors(name, compress),
            dimension_names=spec.dimension_names,
        )
        data = np.empty((n, *spec.row_shape), dtype=object if spec.dtype is str else spec.dtype)
        for i, r in enumerate(rows):
            data[i] = r[name]
        arr[:] = data
    coords = coordinate_arrays(meta)
    for name, values in coords.items():
        arr = group.create_array(name, shape=(len(values),), dtype=str, fill_value="", dimension_names=["layer"])
        arr[:] = np.array(values, dtype=object)
    theirs = _files(tmp_path / "plain.zarr" / session)

    def array_files(files: dict[str, bytes]) -> dict[str, bytes]:
        names = [*column_specs(meta), *coords]
        return {k: v for k, v in files.items() if any(k.startswith(f"{name}/") for name in names)}

    mine, zarrs = array_files(ours), array_files(theirs)
    assert sorted(mine) == sorted(zarrs)  # every array's zarr.json and chunks, no more, no fewer
    assert len(mine) > 2 * len(column_specs(meta)) and "frames/layer/zarr.json" in mine
    assert "lens/top_ids/zarr.json" in mine and "attention/top_pos/zarr.json" in mine and "lens/layer/zarr.json" in mine
    for key, data in mine.items():
        assert data == zarrs[key], key
    assert ours["zarr.json"] == theirs["zarr.json"]  # the session group, the commit point


# -- bad stores -------------------------------------------------------------------------------


def test_missing_store(tmp_path):
    msg = one_line_error(lambda: llmri.open_store(tmp_path / "nope.zarr"), "no such store")
    assert str(tmp_path / "nope.zarr") in msg
    assert not (tmp_path / "nope.zarr").exists()


def test_not_an_llmri_store(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("hello")
    one_line_error(lambda: llmri.open_store(f), "not an llmri store")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_text("1")
    one_line_error(lambda: llmri.open_store(d, create=True), "not an llmri store .*without zarr.json")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", attributes={"x": 1})
    msg = one_line_error(lambda: llmri.open_store(tmp_path / "plain.zarr"), "not an llmri store")
    assert "plain.zarr" in msg
    a = zarr.create_array(str(tmp_path / "arr.zarr"), shape=(2,), dtype="i4")
    a[:] = 1
    one_line_error(lambda: llmri.open_store(tmp_path / "arr.zarr"), "is not a group")


def test_a_session_directory_is_not_a_store(tmp_path):
    store, ids = _store_with_sessions(tmp_path, 1)
    one_line_error(lambda: llmri.open_store(os.path.join(store.url, "sessions", ids[0])), "two levels up")


def test_store_from_a_newer_format(tmp_path):
    zarr.open_group(str(tmp_path / "new.zarr"), mode="w", attributes={"llmri": {"kind": "store", "format_version": 99}})
    one_line_error(lambda: llmri.open_store(tmp_path / "new.zarr"), r"newer llmri \(format 99.*upgrade")


def test_corrupt_store_metadata(tmp_path):
    llmri.open_store(tmp_path / "c.zarr", create=True)
    (tmp_path / "c.zarr" / "zarr.json").write_text("{not json")
    one_line_error(lambda: llmri.open_store(tmp_path / "c.zarr"), "corrupt metadata .*not valid JSON")


def _store_with_sessions(tmp_path, n=3):
    store = ZarrFrameStore(str(tmp_path / "s.zarr"), create=True)
    ids = []
    for _ in range(n):
        with store.create_session(base_meta()) as w:
            for i in range(3):
                w.append(make_frame(i))
        ids.append(w.id)
    return store, ids


def _edit_session_json(store, sid, fn):
    p = os.path.join(store.url, "sessions", sid, "zarr.json")
    doc = json.loads(open(p).read())
    fn(doc)
    with open(p, "w") as fh:
        json.dump(doc, fh)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("garbage", "not valid JSON"),
        ("newer", r"newer llmri \(format 7"),
        ("no_meta", "no meta object"),
        ("bad_n", "n_committed 'x'"),
        ("bad_tile", "tile must be"),
        ("no_llmri", "not an llmri session"),
        ("short_array", "holds 2 rows, 3 committed"),
    ],
)
def test_bad_session_is_reported_and_skipped(tmp_path, damage, match):
    store, ids = _store_with_sessions(tmp_path)
    bad = ids[1]
    if damage == "garbage":
        with open(os.path.join(store.url, "sessions", bad, "zarr.json"), "w") as fh:
            fh.write('{"zarr_format": 3, "node_type": "gro')
    elif damage == "newer":
        _edit_session_json(store, bad, lambda d: d["attributes"]["llmri"].update(format_version=7))
    elif damage == "no_meta":
        _edit_session_json(store, bad, lambda d: d["attributes"].pop("meta"))
    elif damage == "bad_n":
        _edit_session_json(store, bad, lambda d: d["attributes"].update(n_committed="x"))
    elif damage == "bad_tile":
        _edit_session_json(store, bad, lambda d: d["attributes"]["meta"].update(tile="16x16"))
    elif damage == "no_llmri":
        _edit_session_json(store, bad, lambda d: d["attributes"].pop("llmri"))
    elif damage == "short_array":
        arr = zarr.open_array(store.url, path=f"sessions/{bad}/frames/resid", mode="a")
        arr.resize((2, 4, 3, 5))
    reopened = ZarrFrameStore(store.url)
    listed = reopened.sessions()
    if damage == "short_array":  # only detected when the frames are read
        assert len(listed) == 3
        one_line_error(lambda: reopened.session(bad).frames("resid"), match)
        return
    assert [s.id for s in listed] == sorted([ids[0], ids[2]])
    assert len(reopened.problems) == 1 and bad in reopened.problems[0] and store.url in reopened.problems[0]
    assert "\n" not in reopened.problems[0]
    one_line_error(lambda: reopened.session(bad), match)
    # the good ones still read in full
    np.testing.assert_array_equal(listed[0].frames("resid", 2, 3)[0], make_frame(2).tiles["resid"])


def test_bad_session_ids(tmp_path):
    store, _ = _store_with_sessions(tmp_path, 1)
    for sid in ["../x", "", ".."]:
        one_line_error(lambda sid=sid: store.session(sid), "bad session id|no session")


# -- liveness of a recording session ------------------------------------------------------------


def _recording_session(tmp_path, writer: dict):
    store = ZarrFrameStore(str(tmp_path / "live.zarr"), create=True)
    w = store.create_session(base_meta())
    w.append(make_frame(0))
    w.commit()
    _edit_session_json(store, w.id, lambda d: d["attributes"]["meta"].update(writer=writer))
    return store.session(w.id)


def test_recording_with_live_writer(tmp_path):
    import socket

    from llmri.store.zarr.liveness import pid_start as _pid_start

    s = _recording_session(
        tmp_path, {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid())}
    )
    assert s.status == "recording"


def test_recording_with_dead_writer_reads_interrupted(tmp_path):
    import socket

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s = _recording_session(tmp_path, {"host": socket.gethostname(), "pid": p.pid, "pid_start": None})
    assert s.status == "interrupted"
    assert f"writer process {p.pid}" in s.meta["interrupted_reason"]


def test_recording_with_reused_pid_reads_interrupted(tmp_path):
    import socket

    s = _recording_session(tmp_path, {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": 1})
    assert s.status == "interrupted"


def test_recording_on_another_host_uses_heartbeat(tmp_path):
    fresh = _recording_session(tmp_path, {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 5})
    assert fresh.status == "recording"
    stale = _recording_session(tmp_path, {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600})
    assert stale.status == "interrupted" and "heartbeat" in stale.meta["interrupted_reason"]


# -- two processes ------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    import llmri
    from llmri.backends.synthetic import SyntheticModel
    from llmri.store.zarr import ZarrFrameStore

    store = ZarrFrameStore(sys.argv[1], create=True)
    st = llmri.stream(SyntheticModel(), sys.argv[2], max_new_tokens=60, ignore_eos=True, store=store)
    for i, frame in enumerate(st):
        if i % 8 == 0:
            time.sleep(0.01)  # interleave with the other writer
    print(st.session_id)
    """
)


@pytest.mark.slow
def test_two_processes_write_different_sessions(tmp_path, synthetic_model):
    path = str(tmp_path / "shared.zarr")
    script = tmp_path / "w.py"
    script.write_text(WRITER)
    prompts = ["first prompt", "another, longer prompt"]
    procs = [
        subprocess.Popen([sys.executable, str(script), path, p], stdout=subprocess.PIPE, text=True) for p in prompts
    ]
    ids = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    store = llmri.open_store(path)
    assert sorted(store.session_ids()) == sorted(ids) and store.problems == []
    for sid, prompt in zip(ids, prompts, strict=True):
        got = store.session(sid)
        want = llmri.capture(synthetic_model, prompt, max_new_tokens=60, ignore_eos=True)
        assert got.status == "complete" and len(got) == len(want)
        for sig in want.signals:
            np.testing.assert_array_equal(got.frames(sig), want.frames(sig))
        assert got.tokens.text == want.tokens.text


def test_learned_reducer_state_is_saved_with_the_session(tmp_path, synthetic_model):
    s = llmri.capture(synthetic_model, "hi", max_new_tokens=3, reducer="ipca", tile="4x4", store=tmp_path / "i.zarr")
    z = llmri.open_store(tmp_path / "i.zarr").session(s.id)
    assert set(z.reducer_state) == set(s.reducer_state) and "resid.components" in z.reducer_state
    for k, v in s.reducer_state.items():
        np.testing.assert_array_equal(z.reducer_state[k], v)
    assert z.meta["reducer"]["kind"] == "ipca"
    np.testing.assert_array_equal(z.frames("attn"), s.frames("attn"))


def test_a_dropped_writer_releases_its_thread(tmp_path):
    import gc
    import threading

    store = ZarrFrameStore(str(tmp_path / "d.zarr"), create=True)
    w = store.create_session(base_meta())
    w.append(make_frame(0))
    name = f"llmri-commit-{w.id}"
    assert any(t.name == name for t in threading.enumerate())
    del w
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == name for t in threading.enumerate())
