"""The test suite every :class:`~llmri.store.base.FrameStore` passes, shipped so that a third-party
store can run it too (as zarr ships ``zarr.testing.store``)::

    from llmri.testing.store import StoreSuite

    class TestMyStore(StoreSuite):
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "run")

        def reopen(self, store):  # a second handle on the same data, as another process opens it
            return MyStore(store.location)

``buffers_appends = False`` for a store whose appended frames are visible before a commit. Needs
pytest. The suite's captures use the synthetic backend: no model, no download.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import time

import numpy as np
import pytest

import llmri

from .._errors import StoreError
from ..store.abilities import SupportsAdd, SupportsRefresh
from ..store.base import FrameStore
from .frames import ATTN_K, HEADS, LENS_K, SIGNALS, H, L, W, base_meta, make_frame, padded


class StoreSuite:
    """Tests every FrameStore must pass. Subclasses provide :meth:`make_store` and :meth:`reopen`."""

    #: Whether appended frames stay invisible until committed (False: visible at once).
    buffers_appends = True

    @pytest.fixture
    def store(self, tmp_path) -> FrameStore:
        return self.make_store(tmp_path)

    @pytest.fixture(scope="class")
    @classmethod
    def synthetic_model(cls):
        from ..backends.synthetic import SyntheticModel

        return SyntheticModel()

    def make_store(self, tmp_path) -> FrameStore:
        raise NotImplementedError

    def reopen(self, store: FrameStore) -> FrameStore:
        """The same store as another reader would see it (a fresh open for persistent stores)."""
        return store

    # -- sessions ---------------------------------------------------------------------------
    def test_new_store_is_empty(self, store):
        assert store.session_ids() == []
        assert store.sessions() == []
        assert store.problems == []

    def test_roundtrip_hand_made_frames(self, store):
        frames = [make_frame(i, role="prompt" if i < 3 else "generated") for i in range(21)]
        with store.create_session(base_meta(), {"resid.proj": np.arange(6.0).reshape(2, 3)}) as w:
            for f in frames:
                w.append(f)
            sid = w.id
        s = self.reopen(store).session(sid)
        assert s.id == sid and s.status == "complete" and len(s) == 21
        for sig in SIGNALS:
            want = np.stack([f.tiles[sig] for f in frames])
            got = s.frames(sig)
            assert got.dtype == np.float16 and got.shape == (21, L, H, W)
            np.testing.assert_array_equal(got, want)
            norm, sparsity = s.stats(sig)
            np.testing.assert_array_equal(norm, np.stack([f.norms[sig] for f in frames]))
            np.testing.assert_array_equal(sparsity, np.stack([f.sparsity[sig] for f in frames]))
        for f, t in zip(frames, s.tokens, strict=True):
            a, b = f.token, t
            assert (a.index, a.id, a.text, a.role, a.top_ids, a.top_texts) == (
                b.index,
                b.id,
                b.text,
                b.role,
                b.top_ids,
                b.top_texts,
            )
            np.testing.assert_allclose(a.top_probs, b.top_probs)
            assert (math.isnan(a.logprob) and math.isnan(b.logprob)) or a.logprob == pytest.approx(b.logprob)
        np.testing.assert_array_equal(s.reducer_state["resid.proj"], np.arange(6.0).reshape(2, 3))

    def test_roundtrip_readouts(self, store):
        frames = [make_frame(i, readouts=True, role="prompt" if i < 3 else "generated") for i in range(21)]
        with store.create_session(base_meta(readouts=True)) as w:
            for f in frames:
                w.append(f)
        s = self.reopen(store).session(w.id)
        assert s.readouts == ["lens", "attention"]
        lens, attn = s.lens(), s.attention()
        assert lens.layers == s.layers == attn.layers
        for name in ("top_ids", "top_probs", "next_prob", "next_rank", "entropy"):
            want = np.stack([getattr(f.lens, name) for f in frames])
            got = getattr(lens, name)
            assert got.dtype == want.dtype and got.shape == (21, *want.shape[1:])
            np.testing.assert_array_equal(got, want)
        for name in ("top_pos", "top_weight"):
            want = np.stack([padded(getattr(f.attention, name), (L, HEADS, ATTN_K)) for f in frames])
            np.testing.assert_array_equal(getattr(attn, name), want)
        assert attn.top_pos.dtype == np.int32 and attn.top_weight.dtype == np.float32
        assert (attn.top_pos[:, 1] == -1).all() and np.isnan(attn.top_weight[:, 1]).all()
        np.testing.assert_array_equal(attn.sink, np.stack([f.attention.sink for f in frames]))
        np.testing.assert_array_equal(s.attention(10, 12).entropy, attn.entropy[10:12])
        assert len(s.lens(30, 40)) == 0 and s.lens(30, 40).top_ids.shape == (0, L, LENS_K)
        np.testing.assert_array_equal(s.tokens.ids, [f.token.id for f in frames])

    def test_readouts_in_xarray_exports_and_markers(self, store, tmp_path):
        pytest.importorskip("xarray")
        pytest.importorskip("dask")
        from llmri.readouts import markers
        from llmri.render.export import export, session_json

        frames = [make_frame(i, readouts=True) for i in range(21)]
        with store.create_session(base_meta(readouts=True)) as w:
            for f in frames:
                w.append(f)
        s = self.reopen(store).session(w.id)
        ds = s.to_xarray()
        assert dict(ds.sizes) == {
            "token": 21,
            "layer": L,
            "tile_y": H,
            "tile_x": W,
            "rank": 5,
            "head": HEADS,
            "attn_rank": ATTN_K,
        }
        assert ds.lens_top_ids.dims == ("token", "layer", "rank")
        assert ds.attn_top_pos.dims == ("token", "layer", "head", "attn_rank")
        np.testing.assert_array_equal(ds.lens_next_prob.values, s.lens().next_prob)
        np.testing.assert_array_equal(ds.attn_top_weight.values, s.attention().top_weight)
        out = export(s, "npz", tmp_path / "s.npz")[0]
        with np.load(out) as z:
            np.testing.assert_array_equal(z["lens_top_ids"], s.lens().top_ids)
            np.testing.assert_array_equal(z["attention_sink"], s.attention().sink)
        doc = session_json(s)
        assert doc["lens"]["layers"] == s.layers and len(doc["attention"]["top_pos"]) == 21
        assert doc["attention"]["top_weight"][0][1][0][0] is None  # NaN -> null (layer 1 has none)
        assert isinstance(markers(s), list)

    def test_readouts_are_checked_on_append(self, store):
        with pytest.raises(StoreError, match="frame 0 has no lens readout"):
            with store.create_session(base_meta(readouts=True)) as w:
                w.append(make_frame(0))
        f = make_frame(0, readouts=True)
        f.attention.top_pos = np.zeros((L, HEADS, ATTN_K + 1), np.int32)
        with pytest.raises(StoreError, match="attention top_pos of shape .4, 2, 7. does not fit .4, 2, 6."):
            with store.create_session(base_meta(readouts=True)) as w:
                w.append(f)

    def test_roundtrip_probes(self, store):
        from ..frame import ProbeRow

        rng = np.random.default_rng(0)
        names = ["up", "down.2"]
        frames = [make_frame(i) for i in range(21)]
        for f in frames:  # layer 0 is not the direction's: NaN there
            rows = rng.standard_normal((len(names), 2, L)).astype(np.float32)
            rows[:, :, 0] = np.nan
            f.probes = {n: ProbeRow(cosine=rows[k, 0], projection=rows[k, 1]) for k, n in enumerate(names)}
        meta = {**base_meta(), "probes": [{"name": n, "signal": "resid", "layers": [1, 2, 3]} for n in names]}
        with store.create_session(meta) as w:
            for f in frames:
                w.append(f)
        s = self.reopen(store).session(w.id)
        assert s.probes == names
        for n in names:
            p = s.probe(n)
            assert p.projection.dtype == np.float32 and p.cosine.shape == (21, L) and p.record["layers"] == [1, 2, 3]
            np.testing.assert_array_equal(p.projection, np.stack([f.probes[n].projection for f in frames]))
            np.testing.assert_array_equal(p.cosine, np.stack([f.probes[n].cosine for f in frames]))
        np.testing.assert_array_equal(s.probe("up", 10, 12).cosine, s.probe("up").cosine[10:12])
        with pytest.raises(StoreError, match="frame 0 has no row of probe up"):
            with store.create_session(meta) as w:
                w.append(make_frame(0))
        if importlib.util.find_spec("xarray") and importlib.util.find_spec("dask"):
            ds = s.to_xarray()
            assert ds["probe_down.2_projection"].dims == ("token", "layer")
            np.testing.assert_array_equal(ds["probe_up_cosine"].values, s.probe("up").cosine)

    def test_to_xarray_and_tokens_df(self, store):
        pytest.importorskip("xarray")
        pytest.importorskip("dask")
        frames = [make_frame(i, role="prompt" if i < 3 else "generated") for i in range(21)]
        with store.create_session(base_meta()) as w:
            for f in frames:
                w.append(f)
        s = self.reopen(store).session(w.id)
        ds = s.to_xarray()
        assert dict(ds.sizes) == {"token": 21, "layer": L, "tile_y": H, "tile_x": W, "rank": 5}
        assert ds.layer.values.tolist() == base_meta()["layers"]
        assert ds.role.values.tolist() == [f.token.role for f in frames]
        for sig in SIGNALS:
            np.testing.assert_array_equal(ds[sig].values, np.stack([f.tiles[sig] for f in frames]))
            np.testing.assert_array_equal(ds[f"{sig}_norm"].values, np.stack([f.norms[sig] for f in frames]))
        np.testing.assert_array_equal(ds.token_id.values, [f.token.id for f in frames])
        np.testing.assert_array_equal(ds.top_ids.values, s.tokens.top_ids)
        df = s.tokens_df()
        assert df.text.tolist() == [f.token.text for f in frames]
        assert df.top_texts.tolist() == [list(f.token.top_texts) for f in frames]

    def test_frame_ranges(self, store):
        frames = [make_frame(i) for i in range(40)]
        with store.create_session(base_meta()) as w:
            for f in frames:
                w.append(f)
        s = self.reopen(store).session(w.id)
        want = np.stack([f.tiles["resid"] for f in frames])
        for start, stop in [(0, 1), (15, 17), (16, 32), (33, None), (None, 5), (-3, None), (38, 100), (50, 60), (5, 2)]:
            np.testing.assert_array_equal(s.frames("resid", start, stop), want[start:stop])
        assert s.stats("mlp", 10, 12)[0].shape == (2, L)

    def test_capture_into_store_equals_fresh_capture(self, store, synthetic_model):
        fresh = llmri.capture(synthetic_model, "Why?", chat=True, max_new_tokens=30)
        st = llmri.stream(synthetic_model, "Why?", chat=True, max_new_tokens=30, store=store)
        for _ in st:
            pass
        s = self.reopen(store).session(st.session_id)
        assert s.status == "complete" and len(s) == len(fresh)
        for sig in fresh.signals:
            np.testing.assert_array_equal(s.frames(sig), fresh.frames(sig))
            np.testing.assert_array_equal(s.stats(sig)[0], fresh.stats(sig)[0])
        assert s.text == fresh.text
        assert s.tokens.text == fresh.tokens.text
        np.testing.assert_array_equal(s.tokens.top_ids, fresh.tokens.top_ids)
        for key in ("model", "backend", "reducer", "signals", "layers", "tile", "generation", "messages", "scales"):
            assert s.meta[key] == fresh.meta[key], key
        assert s.meta["stop_reason"] == "max_new_tokens"
        assert s.meta["created"]

    def test_capture_with_store_path_returns_session_with_store_id(self, store, synthetic_model):
        sess = llmri.capture(synthetic_model, "Hi", max_new_tokens=5, store=store)
        assert self.reopen(store).session_ids() == [sess.id]

    def test_unknown_session_and_signal(self, store):
        with pytest.raises(StoreError, match="no session 'nope'") as exc:
            store.session("nope")
        assert "\n" not in str(exc.value)
        with store.create_session(base_meta(["resid"])) as w:
            w.append(make_frame(0, ["resid"]))
        s = self.reopen(store).session(w.id)
        with pytest.raises(StoreError, match="no signal 'attn'"):
            s.frames("attn")
        with pytest.raises(StoreError, match="no signal 'attn'"):
            s.stats("attn")

    def test_commit_makes_frames_visible(self, store):
        w = store.create_session(base_meta())
        w.commit_every, w.commit_seconds = 10_000, 10_000.0
        for i in range(10):
            w.append(make_frame(i))
        seen = len(self.reopen(store).session(w.id))
        assert seen == (0 if self.buffers_appends else 10)
        w.commit()
        s = self.reopen(store).session(w.id)
        assert len(s) == 10 and s.status == "recording"
        np.testing.assert_array_equal(s.frames("resid", 9, 10)[0], make_frame(9).tiles["resid"])
        w.close()
        assert self.reopen(store).session(w.id).status == "complete"

    def _wait_len(self, store, sid, at_least, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            n = len(self.reopen(store).session(sid))
            if n >= at_least or time.monotonic() > deadline:
                return n
            time.sleep(0.02)

    def test_commits_every_n_frames(self, store):
        w = store.create_session(base_meta())
        w.commit_seconds = 10_000.0
        w.commit_every = 16
        for i in range(40):
            w.append(make_frame(i))
        # once the writer catches up, fewer than commit_every frames wait for a commit
        n = self._wait_len(store, w.id, 40 - 15)
        assert 40 - 15 <= n <= 40
        w.close()
        assert len(self.reopen(store).session(w.id)) == 40

    def test_commit_every_second(self, store):
        w = store.create_session(base_meta())
        w.commit_seconds = 0.05
        w.append(make_frame(0))
        time.sleep(0.1)
        w.append(make_frame(1))
        assert self._wait_len(store, w.id, 2, timeout=3.0) == 2
        w.close()

    def test_exception_marks_interrupted(self, store):
        with pytest.raises(RuntimeError):
            with store.create_session(base_meta()) as w:
                w.append(make_frame(0))
                raise RuntimeError("boom")
        s = self.reopen(store).session(w.id)
        assert s.status == "interrupted" and len(s) == 1

    def test_out_of_order_append(self, store):
        w = store.create_session(base_meta())
        w.append(make_frame(0))
        with pytest.raises(StoreError, match="frame 2 appended at position 1"):
            w.append(make_frame(2))
        w.close()

    def test_update_meta(self, store):
        w = store.create_session(base_meta())
        w.append(make_frame(0))
        w.update_meta(stop_reason="eos", note={"a": [1, 2]})
        w.close()
        m = self.reopen(store).session(w.id).meta
        assert m["stop_reason"] == "eos" and m["note"] == {"a": [1, 2]}
        assert m["format_version"] == 1

    def test_chat_only_session(self, store):
        with store.create_session({"signals": [], "layers": [], "tile": [0, 0]}) as w:
            for i in range(3):
                w.append(make_frame(i, []))
        s = self.reopen(store).session(w.id)
        assert s.chat_only and len(s) == 3 and s.tokens.ids.tolist() == [100, 101, 102]
        with pytest.raises(StoreError, match="chat-only"):
            s.frames("resid")

    def test_empty_session_reads(self, store):
        w = store.create_session(base_meta())
        s = self.reopen(store).session(w.id)
        assert len(s) == 0 and s.frames("resid").shape == (0, L, H, W) and len(s.tokens) == 0
        assert s.stats("resid")[0].shape == (0, L)
        w.close()

    def test_many_sessions_interleaved(self, store):
        writers = [store.create_session(base_meta()) for _ in range(3)]
        for i, w in itertools.product(range(20), writers):
            w.append(make_frame(i))
        for w in writers:
            w.close()
        st = self.reopen(store)
        ids = st.session_ids()
        assert sorted(ids) == sorted(w.id for w in writers) and len(set(ids)) == 3
        listed = st.sessions()
        assert [s.id for s in listed] == ids and all(len(s) == 20 for s in listed)
        for s in listed:
            np.testing.assert_array_equal(s.frames("mlp", 19, 20)[0], make_frame(19).tiles["mlp"])

    def test_append_after_close_fails(self, store):
        w = store.create_session(base_meta())
        w.close()
        with pytest.raises(StoreError, match="closed"):
            w.append(make_frame(0))

    def test_open_store_passes_store_through(self, store):
        assert llmri.open_store(store) is store

    # -- optional abilities: a store without one skips its test, saying so ---------------------
    def test_refresh_catches_up_with_commits(self, store):
        w = store.create_session(base_meta())
        w.commit_every, w.commit_seconds = 10_000, 10_000.0
        reader = self.reopen(store).session(w.id)
        if not isinstance(reader, SupportsRefresh):
            w.close()
            pytest.skip(f"{type(reader).__name__} has no refresh(): it shows every frame as appended")
        for i in range(5):
            w.append(make_frame(i))
        w.commit()
        assert len(reader) == 0 and reader.status == "recording"  # a snapshot until refreshed
        reader.refresh()
        assert len(reader) == 5 and reader.tokens.ids.tolist() == [100, 101, 102, 103, 104]
        w.close()
        reader.refresh()
        assert reader.status == "complete"

    def test_add_a_finished_session(self, store, synthetic_model):
        if not isinstance(store, SupportsAdd):
            pytest.skip(f"{type(store).__name__} has no add(): sessions go in through create_session()")
        sess = llmri.capture(synthetic_model, "Hi", max_new_tokens=3)
        store.add(sess)
        assert sess.id in store.session_ids()
        got = self.reopen(store).session(sess.id)
        assert len(got) == len(sess) and got.text == sess.text
        np.testing.assert_array_equal(got.frames("resid"), sess.frames("resid"))
