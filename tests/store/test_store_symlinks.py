"""A local store never follows a symbolic link below its root (docs/FORMAT.md, "Links").

A store prepared by someone else must not make llmri (or the viewer serving it) read files from
elsewhere: a session holding a link is listed in ``problems`` and not opened, a link swapped in
after a session was opened is refused when read, and no message names a link's target or size.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from helpers import one_line_error
from llmri._errors import StoreError
from llmri.store.zarr import ZarrFrameStore
from llmri.testing.frames import L, base_meta, make_frame

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")

#: Bytes of one raw chunk of frames/resid: 16 frames of [L, 3, 5] float16.
CHUNK_BYTES = 16 * L * 3 * 5 * 2


def _store(path, n=2):
    store = ZarrFrameStore(str(path), create=True)
    ids = []
    for _ in range(n):
        with store.create_session(base_meta()) as w:
            for i in range(3):
                w.append(make_frame(i))
        ids.append(w.id)
    return store, ids


def _chunk(store_path, sid):
    return os.path.join(store_path, "sessions", sid, "frames", "resid", "c", "0", "0", "0", "0")


def _outside_chunk(tmp_path, size=CHUNK_BYTES):
    """A file outside the store that decodes as frames: what a link must not serve."""
    f = tmp_path / "secret.bin"
    f.write_bytes(np.full(size // 2, 7.0, np.float16).tobytes() + b"x" * (size % 2))
    return f


def _link(target, where):
    if os.path.isdir(where) and not os.path.islink(where):
        shutil.rmtree(where)
    elif os.path.lexists(where):
        os.unlink(where)
    os.symlink(target, where)


def _assert_refused(store, sid, *secrets):
    """``sid`` is in ``problems`` (one line, naming no secret), not listed, and does not open."""
    reopened = ZarrFrameStore(store.url)
    listed = reopened.sessions()
    assert sid not in [s.id for s in listed]
    assert len(reopened.problems) == 1, reopened.problems
    problem = reopened.problems[0]
    assert sid in problem and "symbolic link" in problem and "\n" not in problem
    msg = one_line_error(lambda: reopened.session(sid), "symbolic link")
    for text in (problem, msg):
        for secret in secrets:
            assert str(secret) not in text
    return listed


def test_session_directory_linked_outside_the_store(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    _other, (foreign,) = _store(tmp_path / "other.zarr", 1)
    outside = tmp_path / "other.zarr" / "sessions" / foreign
    _link(outside, os.path.join(store.url, "sessions", ids[1]))
    listed = _assert_refused(store, ids[1], outside, tmp_path / "other.zarr")
    assert [s.id for s in listed] == [ids[0]]
    np.testing.assert_array_equal(listed[0].frames("resid", 2, 3)[0], make_frame(2).tiles["resid"])


def test_chunk_linked_to_an_outside_file_of_the_right_size(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    assert os.path.getsize(_chunk(store.url, ids[1])) == CHUNK_BYTES
    secret = _outside_chunk(tmp_path)
    _link(secret, _chunk(store.url, ids[1]))
    _assert_refused(store, ids[1], secret)


def test_chunk_linked_after_the_session_was_opened_is_refused_when_read(tmp_path):
    store, ids = _store(tmp_path / "s.zarr", 1)
    s = ZarrFrameStore(store.url).session(ids[0])
    np.testing.assert_array_equal(s.frames("resid", 0, 1)[0], make_frame(0).tiles["resid"])
    secret = _outside_chunk(tmp_path)
    _link(secret, _chunk(store.url, ids[0]))
    msg = one_line_error(lambda: s.frames("resid", 0, 3), "symbolic link")
    assert str(secret) not in msg


def test_a_store_walks_a_session_again_once_its_zarr_json_changed(tmp_path):
    store, ids = _store(tmp_path / "s.zarr", 1)
    store.session(ids[0])  # walked, found clean
    _link(_outside_chunk(tmp_path), _chunk(store.url, ids[0]))
    s = store.session(ids[0])  # not walked again: the read refuses the link
    one_line_error(lambda: s.frames("resid"), "symbolic link")
    doc = os.path.join(store.url, "sessions", ids[0], "zarr.json")
    shutil.copy(doc, doc + ".new")
    os.replace(doc + ".new", doc)  # what a commit does
    one_line_error(lambda: store.session(ids[0]), "not opened: .*symbolic link")


def test_session_zarr_json_linked(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    doc = tmp_path / "zarr.json"
    shutil.copy(os.path.join(store.url, "sessions", ids[1], "zarr.json"), doc)
    _link(doc, os.path.join(store.url, "sessions", ids[1], "zarr.json"))
    _assert_refused(store, ids[1], doc)


def test_array_zarr_json_linked(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    doc = tmp_path / "zarr.json"
    where = os.path.join(store.url, "sessions", ids[1], "frames", "resid", "zarr.json")
    shutil.copy(where, doc)
    _link(doc, where)
    _assert_refused(store, ids[1], doc)


def test_a_directory_on_the_way_linked(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    folder = os.path.join(store.url, "sessions", ids[1], "frames", "resid", "c")
    away = tmp_path / "c"
    shutil.move(folder, away)
    _link(away, folder)
    _assert_refused(store, ids[1], away)


def test_a_link_that_stays_inside_the_store_is_refused_too(tmp_path):
    store, ids = _store(tmp_path / "s.zarr")
    _link(_chunk(store.url, ids[0]), _chunk(store.url, ids[1]))
    _assert_refused(store, ids[1])


def test_a_special_file_is_refused_without_reading_it(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    store, ids = _store(tmp_path / "s.zarr")
    os.unlink(_chunk(store.url, ids[1]))
    os.mkfifo(_chunk(store.url, ids[1]))  # reading it would block the viewer
    reopened = ZarrFrameStore(store.url)
    assert [s.id for s in reopened.sessions()] == [ids[0]]
    assert "not a regular file" in reopened.problems[0]
    one_line_error(lambda: reopened.session(ids[1]), "not a regular file")


@pytest.mark.parametrize("when", ["at open", "after open"])
def test_a_wrong_size_target_does_not_leak_its_size(tmp_path, when):
    store, ids = _store(tmp_path / "s.zarr", 1)
    size = 12_346  # 6,173 float16 values: neither number may appear in any message
    s = ZarrFrameStore(store.url).session(ids[0])
    secret = _outside_chunk(tmp_path, size)
    _link(secret, _chunk(store.url, ids[0]))
    reopened = ZarrFrameStore(store.url)
    if when == "at open":
        reopened.sessions()
        messages = [*reopened.problems, one_line_error(lambda: reopened.session(ids[0]), "symbolic link")]
    else:
        messages = [one_line_error(lambda: s.frames("resid"), "symbolic link")]
    for msg in messages:
        assert str(size) not in msg and str(size // 2) not in msg and "12,346" not in msg
        assert str(secret) not in msg


def test_a_store_whose_own_path_is_a_link_still_works(tmp_path):
    real = tmp_path / "data" / "run.zarr"
    real.parent.mkdir()
    _, ids = _store(real)
    link = tmp_path / "run.zarr"
    os.symlink(real, link)
    store = ZarrFrameStore(str(link))
    assert store.url == str(link)
    assert [s.id for s in store.sessions()] == sorted(ids) and store.problems == []
    with store.create_session(base_meta()) as w:
        w.append(make_frame(0))
    assert os.path.isdir(real / "sessions" / w.id)
    np.testing.assert_array_equal(
        ZarrFrameStore(str(link)).session(w.id).frames("resid")[0], make_frame(0).tiles["resid"]
    )
    # ... and still refuses a link inside it
    _link(_outside_chunk(tmp_path), _chunk(str(real), ids[0]))
    reopened = ZarrFrameStore(str(link))
    assert ids[0] not in [s.id for s in reopened.sessions()]
    assert len(reopened.problems) == 1 and "symbolic link" in reopened.problems[0]


def test_a_new_store_through_a_link_to_an_empty_directory(tmp_path):
    (tmp_path / "data").mkdir()
    link = tmp_path / "run.zarr"
    os.symlink(tmp_path / "data", link)
    store = ZarrFrameStore(str(link), create=True)
    with store.create_session(base_meta()) as w:
        w.append(make_frame(0))
    assert os.path.islink(link) and os.path.isfile(tmp_path / "data" / "sessions" / w.id / "zarr.json")
    assert [s.id for s in ZarrFrameStore(str(link)).sessions()] == [w.id]


def test_linked_store_metadata_refuses_the_store(tmp_path):
    store, _ = _store(tmp_path / "s.zarr", 1)
    away = tmp_path / "sessions"
    shutil.move(os.path.join(store.url, "sessions"), away)
    _link(away, os.path.join(store.url, "sessions"))
    msg = one_line_error(lambda: ZarrFrameStore(store.url), "symbolic link")
    assert str(away) not in msg


# -- writes: a link planted while a session is written is refused, not written through --------------


def _tree(folder):
    """Every file under ``folder`` with its bytes: what a refused write must leave as it was."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


@pytest.mark.parametrize("background", [False, True])
def test_a_folder_swapped_for_a_link_mid_session_is_not_written_through(tmp_path, background):
    store = ZarrFrameStore(str(tmp_path / "s.zarr"), create=True, background=background)
    w = store.create_session(base_meta())
    for i in range(3):
        w.append(make_frame(i))
    w.commit()
    folder = os.path.join(store.url, "sessions", w.id, "frames", "resid", "c")
    away = tmp_path / "away"
    shutil.move(folder, away)
    _link(away, folder)
    before = _tree(away)
    msg = one_line_error(lambda: [w.append(make_frame(i)) for i in range(3, 6)] and w.commit(), "symbolic link")
    assert "write failed" in msg and str(away) not in msg
    assert _tree(away) == before  # nothing written (or left half-written) through the link
    assert [f for f in os.listdir(away) if f.endswith(".partial")] == []
    with pytest.raises(StoreError):
        w.close()


@pytest.mark.parametrize("at", [True, False], ids=["openat", "lstat-walk"])
def test_the_zarr_store_refuses_links_for_writes_and_deletes(tmp_path, monkeypatch, at):
    from zarr.core.buffer import default_buffer_prototype

    from llmri.store.zarr import nofollow
    from llmri.store.zarr.internals import run
    from llmri.store.zarr.nofollow import NoFollowLocalStore, RefusedPath

    monkeypatch.setattr(nofollow, "_AT", at and nofollow._AT)  # the walk for systems without openat

    root, away = tmp_path / "root", tmp_path / "away"
    (root / "inside").mkdir(parents=True)
    away.mkdir()
    (away / "kept").write_bytes(b"outside")
    os.symlink(away, root / "linked")
    os.symlink(away / "kept", root / "inside" / "named")
    zs = NoFollowLocalStore(root)
    data = default_buffer_prototype().buffer.from_bytes(b"new")
    for key in ("linked/kept", "linked/new/deeper"):
        with pytest.raises(RefusedPath, match="linked is a symbolic link"):
            run(zs.set(key, data))
        with pytest.raises(RefusedPath, match="linked is a symbolic link"):
            zs.set_sync(key, data)
    for delete in (zs.delete, zs.delete_dir):
        with pytest.raises(RefusedPath, match="linked is a symbolic link"):
            run(delete("linked/kept"))
    with pytest.raises(RefusedPath):
        zs.delete_sync("linked/kept")
    # a file of that name which is a link: replaced by the new file, its target left alone
    run(zs.set("inside/named", data))
    assert not os.path.islink(root / "inside" / "named") and (root / "inside" / "named").read_bytes() == b"new"
    run(zs.set_if_not_exists("inside/named", default_buffer_prototype().buffer.from_bytes(b"other")))
    assert (root / "inside" / "named").read_bytes() == b"new"
    run(zs.set("made/on/the/way", data))  # folders are made as zarr's own store makes them
    assert (root / "made" / "on" / "the" / "way").read_bytes() == b"new"
    assert _tree(away) == {"kept": b"outside"}
    assert sorted(os.listdir(root / "inside")) == ["named"]  # no temporary file left


def test_the_viewer_lists_a_linked_session_as_a_problem_and_does_not_serve_it(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llmri.viewer import create_app

    store, ids = _store(tmp_path / "s.zarr")
    secret = _outside_chunk(tmp_path)
    _link(secret, _chunk(store.url, ids[1]))
    client = TestClient(create_app(store.url), base_url="http://127.0.0.1")
    listing = client.get("/api/stores/s0/sessions")
    assert listing.status_code == 200
    body = listing.json()
    assert [s["id"] for s in body["sessions"]] == [ids[0]]
    assert len(body["problems"]) == 1 and ids[1] in body["problems"][0] and str(secret) not in listing.text
    bad = client.get(f"/api/sessions/s0/{ids[1]}/frames", params={"signal": "resid"})
    assert bad.status_code == 404 and str(secret) not in bad.text
    assert client.get(f"/api/sessions/s0/{ids[0]}/frames", params={"signal": "resid"}).status_code == 200


def test_without_links_the_store_reads_as_zarrs_local_store(tmp_path):
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    from llmri.store.zarr.nofollow import NoFollowLocalStore

    store, ids = _store(tmp_path / "s.zarr", 1)
    ours, theirs = NoFollowLocalStore(store.url, read_only=True), LocalStore(store.url, read_only=True)

    async def listed(s, how, *args):
        return sorted([k async for k in getattr(s, how)(*args)])

    keys = sync(listed(theirs, "list"))
    assert keys and sync(listed(ours, "list")) == keys
    for prefix in ("sessions", f"sessions/{ids[0]}/frames", "nope"):
        assert sync(listed(ours, "list_prefix", prefix)) == sync(listed(theirs, "list_prefix", prefix))
        assert sync(listed(ours, "list_dir", prefix)) == sync(listed(theirs, "list_dir", prefix))
    proto = default_buffer_prototype()
    key = os.path.relpath(_chunk(store.url, ids[0]), store.url)
    for byte_range in (None, RangeByteRequest(3, 40), OffsetByteRequest(100), SuffixByteRequest(7)):
        want = sync(theirs.get(key, proto, byte_range)).to_bytes()
        assert sync(ours.get(key, proto, byte_range)).to_bytes() == want
        assert [b.to_bytes() for b in sync(ours.get_partial_values(proto, [(key, byte_range)]))] == [want]
    assert ours.get_sync(key).to_bytes() == sync(theirs.get(key, proto)).to_bytes()
    for k in (key, "zarr.json", "sessions", "nope/zarr.json", f"{key}/x"):
        assert sync(ours.exists(k)) == sync(theirs.exists(k))
        assert sync(ours.get(k, proto)) is None or sync(theirs.get(k, proto)) is not None
    assert sync(ours.get("sessions", proto)) is None and sync(ours.get("nope/zarr.json", proto)) is None
