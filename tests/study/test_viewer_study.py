"""A study's sessions with ``layers=`` through the real viewer (served on loopback): listed with
their study meta, their frames, stats and lens served at the recorded layers only."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

import httpx  # noqa: E402

import llmri  # noqa: E402
from llmri.study import capture_many  # noqa: E402


def test_viewer_serves_a_layer_subset_study(synthetic_model, tmp_path):
    from llmri.testing.browser import ServedApp
    from llmri.viewer import create_app

    path = str(tmp_path / "s.zarr")
    capture_many(
        synthetic_model, [{"prompt": "a b c", "id": "one", "tag": "t"}], store=path, max_new_tokens=3, layers="0,2"
    )
    served = ServedApp(create_app(llmri.open_store(path)))
    try:
        with httpx.Client(base_url=served.url, headers={"Origin": served.url}) as c:
            sessions = c.get("/api/sessions").json()
            listed = sessions["sessions"] if isinstance(sessions, dict) else sessions
            (s,) = listed
            sid, store_id = s["id"], s.get("store", s.get("store_id", "0"))
            info = c.get(f"/api/sessions/{store_id}/{sid}")
            assert info.status_code == 200, info.text
            body = info.json()
            meta = body.get("meta", body)
            assert meta["layer_indices"] == [0, 2] and len(meta["layers"]) == 2
            assert meta["study"]["id"] == "one" and meta["study"]["metadata"] == {"tag": "t"}
            frames = c.get(f"/api/sessions/{store_id}/{sid}/frames", params={"signal": "resid"})
            assert frames.status_code == 200 and len(frames.content) > 0
            stats = c.get(f"/api/sessions/{store_id}/{sid}/stats", params={"signal": "resid"})
            assert stats.status_code == 200, stats.text
    finally:
        served.close()
