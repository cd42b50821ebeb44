"""``llmri.view(...)``: the viewer from Python, with live chat on the transformers model a script
already holds (not copied, not moved, no hook left), served by real uvicorn over a real store."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("websockets")

import llmri  # noqa: E402
from live_helpers import receive_turn  # noqa: E402
from llmri._errors import CaptureError, StoreError  # noqa: E402


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_live_chat_on_the_model_the_script_holds(tmp_path, real_model):
    from websockets.sync.client import connect

    hf, tok = real_model.model, real_model.tokenizer
    before = {k: v.data_ptr() for k, v in hf.state_dict().items()}
    path = tmp_path / "v.zarr"  # created for the live sessions
    with llmri.view(path, model=hf, tokenizer=tok, port=0, open_browser=False, block=False) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert _get(server.url + "api/info")["live"] is True
        ws_url = server.url.replace("http://", "ws://") + "api/live"
        with connect(ws_url, origin=server.url.rstrip("/"), max_size=None) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "hello" and hello["backend"] == "hf"
            msg = {"type": "chat", "messages": [{"role": "user", "content": "Hi"}], "settings": {"max_new_tokens": 3}}
            ws.send(json.dumps(msg))
            turn = receive_turn(ws)
        assert turn["done"]["status"] == "complete"
        sid = turn["done"]["session"].split("/")[1]
    s = llmri.open_store(path).session(sid)
    assert s.meta["backend"] == "hf" and s.tokens.role.count("generated") == 3
    assert {k: v.data_ptr() for k, v in hf.state_dict().items()} == before  # the same tensors: no copy, no move
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())


def test_view_serves_stores_without_a_model_and_stops(tmp_path, real_model):
    llmri.capture(real_model, "Hi", max_new_tokens=2, store=tmp_path / "a.zarr")
    store = llmri.open_store(tmp_path / "a.zarr")
    with llmri.view([tmp_path / "a.zarr"], port=0, open_browser=False, block=False) as server:
        info = _get(server.url + "api/info")
        assert info["live"] is False
        listed = _get(server.url + "api/sessions")["sessions"]
        assert len(listed) == len(store.session_ids())
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "api/info", timeout=2)


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(StoreError, match="missing.zarr: no such store"):
        llmri.view(tmp_path / "missing.zarr", port=0, open_browser=False, block=False)
    with pytest.raises(StoreError, match="needs a store"):
        llmri.view([], port=0, open_browser=False, block=False)
    with pytest.raises(CaptureError, match="give model= too"):
        llmri.view(tmp_path / "x.zarr", lens=True, port=0, open_browser=False, block=False)
    with pytest.raises(CaptureError, match="directions= are for live chat: give model= too"):
        llmri.view(tmp_path / "x.zarr", directions=["paris.gguf"], port=0, open_browser=False, block=False)
