"""The viewer's HTTP/WebSocket API, in process: every endpoint, the binary format, and the security refusals."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import llmri  # noqa: E402
from llmri.frame import Frame, Token  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.encoding import MAGIC, decode_array, encode_array, quantise_u8  # noqa: E402
from llmri.viewer.security import (  # noqa: E402
    SecurityPolicy,
    is_loopback,
    parse_host,
    parse_origin,
    split_host,
    valid_id,
)

BASE = "http://127.0.0.1:8000"
ORIGIN = {"origin": BASE}
WS = "ws://127.0.0.1:8000"


@pytest.fixture(scope="module")
def sessions(synthetic_model):
    a = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=20)
    b = llmri.capture(synthetic_model, "Why is grass green?", chat=True, max_new_tokens=12)
    n = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=8, reducer="neurons")
    return a, b, n


@pytest.fixture()
def store(sessions):
    st = llmri.MemoryFrameStore()
    for s in sessions:
        st.add(s)
    w = st.create_session(
        {"signals": [], "layers": [], "tile": [0, 0], "chat_only": True, "backend": "openai", "model": {"name": "x"}}
    )
    for i, text in enumerate(["Hi", " there"]):
        w.append(Frame(Token(i, 100 + i, text, "generated", -0.5, 1.0, (100 + i,), (0.6,), (text,))))
    w.close()
    st.chat_id = w.id
    return st


@pytest.fixture()
def client(store):
    return TestClient(create_app(store, port=8000), base_url=BASE)


def _key(s) -> str:
    return f"s0/{s.id}"


# -- encoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.uint8])
def test_encoding_round_trip_and_alignment(dtype):
    arr = (np.arange(2 * 3 * 4 * 5) % 17).astype(dtype).reshape(2, 3, 4, 5)
    msg = encode_array(arr, kind="frames", signal="resid", start=3, stop=5)
    assert msg[:4] == MAGIC
    hlen = int.from_bytes(msg[6:8], "little")
    assert (8 + hlen) % 8 == 0, "payload must start 8-byte aligned"
    assert len(msg) == 8 + hlen + arr.nbytes
    head, back = decode_array(msg)
    assert head["shape"] == [2, 3, 4, 5] and head["dtype"] == np.dtype(dtype).name
    assert head["signal"] == "resid" and head["start"] == 3 and head["stop"] == 5
    np.testing.assert_array_equal(back, arr)


def test_encoding_refuses_bad_input():
    with pytest.raises(ValueError):
        encode_array(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        decode_array(b"NOPE" + bytes(20))
    good = encode_array(np.zeros(4, np.float16))
    with pytest.raises(ValueError):
        decode_array(good[:-1])


def test_quantise_u8_is_close():
    x = np.linspace(-3, 5, 1000).astype(np.float32)
    q, lo, hi = quantise_u8(x)
    back = lo + q.astype(np.float32) * (hi - lo) / 255
    assert np.abs(back - x).max() <= (hi - lo) / 255


# -- pages and metadata --------------------------------------------------------------------------
def test_index_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="/static/js/main.js">' in r.text
    for name in ("js/main.js", "js/api.js", "js/render.js", "app.css", "favicon.svg"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/js/main.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/nope.js").status_code == 404


def test_info_and_colormaps(client):
    info = client.get("/api/info").json()
    assert info["version"] == llmri.__version__
    assert info["stores"] == [{"id": "s0", "label": "memory"}]
    assert info["live"] is False
    cm = client.get("/api/colormaps").json()
    assert set(cm["names"]) == {"grayscale", "energy", "diverging"}
    assert cm["kinds"]["diverging"] == "signed" and cm["kinds"]["grayscale"] == "magnitude"
    for name in cm["names"]:
        assert len(cm["luts"][name]) == 768
    gray = np.array(cm["luts"]["grayscale"]).reshape(256, 3)
    assert (np.diff(gray[:, 0]) >= 0).all() and gray[0, 0] == 0 and gray[255, 0] == 255
    from llmri.render.colormaps import lut

    np.testing.assert_array_equal(np.array(cm["luts"]["energy"]).reshape(256, 3), lut("energy"))


def test_sessions_list(client, store, sessions):
    body = client.get("/api/sessions").json()
    assert body["stores"][0]["n_sessions"] == 4
    by_id = {s["id"]: s for s in body["sessions"]}
    a = by_id[sessions[0].id]
    assert a["n_frames"] == len(sessions[0]) and a["signals"] == ["resid", "attn", "mlp"]
    assert a["status"] == "complete" and a["title"] == "Why is the sky blue?" and a["key"] == _key(sessions[0])
    assert by_id[sessions[2].id]["reducer"] == "neurons"
    assert by_id[store.chat_id]["chat_only"] is True and by_id[store.chat_id]["n_frames"] == 2


def test_stores_endpoints(client, store):
    assert client.get("/api/stores").json() == {
        "stores": [{"id": "s0", "label": "memory", "n_sessions": 4, "problems": []}]
    }
    body = client.get("/api/stores/s0/sessions").json()
    assert body["store"] == "s0" and len(body["sessions"]) == 4
    assert client.get("/api/stores/s1/sessions").status_code == 404
    assert client.get("/api/stores/..%2F/sessions").status_code == 404


def test_session_detail_and_tokens(client, sessions):
    a = sessions[0]
    d = client.get(f"/api/sessions/{_key(a)}").json()
    assert d["meta"]["id"] == a.id and d["summary"]["n_frames"] == len(a)
    rows, cols = d["grid"]
    assert rows * cols >= len(a.layers) and (rows - 1) * cols < len(a.layers)
    t = client.get(f"/api/sessions/{_key(a)}/tokens").json()
    assert t["total"] == len(a) and len(t["tokens"]) == len(a)
    assert "".join(x["text"] for x in t["tokens"]) == "".join(a.tokens.text)
    assert t["tokens"][0]["logprob"] is None  # NaN becomes null, not invalid JSON
    gen = [x for x in t["tokens"] if x["role"] == "generated"]
    assert gen and len(gen[0]["top"]) == 5 and math.isfinite(gen[0]["entropy"])
    part = client.get(f"/api/sessions/{_key(a)}/tokens?start=3&stop=7").json()
    assert [x["index"] for x in part["tokens"]] == [3, 4, 5, 6]
    assert client.get(f"/api/sessions/{_key(a)}/tokens?start=-1").status_code == 400
    assert client.get(f"/api/sessions/{_key(a)}/tokens?start=abc").status_code == 400


# -- frames and stats ----------------------------------------------------------------------------
@pytest.mark.parametrize("signal", ["resid", "attn", "mlp"])
def test_frames_are_exact(client, sessions, signal):
    a = sessions[0]
    r = client.get(f"/api/sessions/{_key(a)}/frames", params={"signal": signal, "start": 2, "stop": 9})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-llmri-array"
    head, arr = decode_array(r.content)
    assert head["kind"] == "frames" and head["signal"] == signal
    assert (head["start"], head["stop"], head["total"], head["status"]) == (2, 9, len(a), "complete")
    assert arr.dtype == np.float16 and arr.shape == (7, len(a.layers), *a.tile)
    np.testing.assert_array_equal(arr, a.frames(signal, 2, 9))


def test_frames_ranges_and_quantised(client, sessions):
    a = sessions[0]
    url = f"/api/sessions/{_key(a)}/frames"
    head, arr = decode_array(client.get(url, params={"signal": "resid"}).content)
    assert head["start"] == 0 and head["stop"] == len(a) and arr.shape[0] == len(a)
    head, arr = decode_array(client.get(url, params={"signal": "resid", "start": len(a) + 5}).content)
    assert arr.shape[0] == 0 and head["start"] == len(a)
    head, q = decode_array(client.get(url, params={"signal": "mlp", "start": 0, "stop": 4, "dtype": "uint8"}).content)
    ref = a.frames("mlp", 0, 4).astype(np.float32)
    back = head["lo"] + q.astype(np.float32) * (head["hi"] - head["lo"]) / 255
    assert q.dtype == np.uint8 and np.abs(back - ref).max() <= (head["hi"] - head["lo"]) / 255 + 1e-6
    assert client.get(url, params={"signal": "nope"}).status_code == 400
    assert client.get(url).status_code == 400  # signal is required
    assert client.get(url, params={"signal": "resid", "start": -2}).status_code == 400
    assert client.get(url, params={"signal": "resid", "dtype": "int64"}).status_code == 400


def test_frames_several_signals_in_one_message(client, sessions):
    a = sessions[0]
    url = f"/api/sessions/{_key(a)}/frames"
    head, arr = decode_array(client.get(url, params={"signal": "mlp,resid", "start": 4, "stop": 10}).content)
    assert head["signal"] == "mlp,resid" and (head["start"], head["stop"]) == (4, 10)
    assert arr.shape == (2, 6, len(a.layers), *a.tile)
    np.testing.assert_array_equal(arr[0], a.frames("mlp", 4, 10))
    np.testing.assert_array_equal(arr[1], a.frames("resid", 4, 10))
    assert client.get(url, params={"signal": "resid,resid"}).status_code == 400
    assert client.get(url, params={"signal": "resid,"}).status_code == 400


def test_neurons_frames_and_chat_only(client, store, sessions):
    n = sessions[2]
    head, arr = decode_array(client.get(f"/api/sessions/{_key(n)}/frames", params={"signal": "attn"}).content)
    assert arr.shape[2:] == tuple(n.tile)
    np.testing.assert_array_equal(arr, n.frames("attn"))
    chat = f"/api/sessions/s0/{store.chat_id}"
    r = client.get(f"{chat}/frames", params={"signal": "resid"})
    assert r.status_code == 400 and "chat-only" in r.json()["error"]
    assert client.get(f"{chat}/tokens").json()["total"] == 2


def test_stats(client, sessions):
    a = sessions[0]
    head, arr = decode_array(client.get(f"/api/sessions/{_key(a)}/stats", params={"signal": "attn"}).content)
    norm, sp = a.stats("attn")
    assert head["kind"] == "stats" and arr.shape == (2, len(a), len(a.layers))
    np.testing.assert_allclose(arr[0], norm)
    np.testing.assert_allclose(arr[1], sp)


# -- compare -------------------------------------------------------------------------------------
def test_compare(client, store, sessions):
    a, b, n = sessions
    ok = client.get("/api/compare", params={"a": _key(a), "b": _key(b)})
    assert ok.status_code == 200 and ok.json() == {"comparable": True, "n_frames": min(len(a), len(b))}
    bad = client.get("/api/compare", params={"a": _key(a), "b": _key(n)})
    assert bad.status_code == 409 and "reducer" in bad.json()["error"]
    chat = client.get("/api/compare", params={"a": _key(a), "b": f"s0/{store.chat_id}"})
    assert chat.status_code == 409 and "chat-only" in chat.json()["error"]
    assert client.get("/api/compare", params={"a": _key(a), "b": "s0/nope"}).status_code == 404
    assert client.get("/api/compare", params={"a": _key(a), "b": "../../etc"}).status_code == 404


def test_compare_refuses_other_model(sessions):
    from llmri.backends.synthetic import SyntheticModel

    other = llmri.capture(SyntheticModel(reply="Another model."), "Why is the sky blue?", chat=True, max_new_tokens=5)
    st = llmri.MemoryFrameStore()
    st.add(sessions[0])
    st.add(other)
    c = TestClient(create_app(st, port=8000), base_url=BASE)
    r = c.get("/api/compare", params={"a": _key(sessions[0]), "b": _key(other)})
    assert r.status_code == 409 and "different models" in r.json()["error"]


# -- live ----------------------------------------------------------------------------------------
def test_live_websocket_pushes_new_frames(sessions):
    src = sessions[1]
    st = llmri.MemoryFrameStore()
    w = st.create_session({k: v for k, v in src.meta.items() if k not in ("id", "status", "stop_reason")})
    for i in range(3):
        w.append(src.frame(i))
    app = create_app(st, port=8000, poll_interval=0.05)
    c = TestClient(app, base_url=BASE)
    with c.websocket_connect(WS + f"/api/sessions/s0/{w.id}/live", headers=ORIGIN) as ws:
        first = ws.receive_json()
        assert first == {"type": "progress", "n_frames": 3, "status": "recording", "meta": {"stop_reason": ""}}
        for i in range(3, 6):
            w.append(src.frame(i))
        msg = ws.receive_json()
        while msg["n_frames"] < 6:
            msg = ws.receive_json()
        assert msg["n_frames"] == 6 and msg["status"] == "recording"
        w.close()
        msg = ws.receive_json()
        assert msg["status"] == "complete"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    head, arr = decode_array(c.get(f"/api/sessions/s0/{w.id}/frames", params={"signal": "resid"}).content)
    assert arr.shape[0] == 6 and head["status"] == "complete"


def test_live_websocket_unknown_session(client):
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect(WS + "/api/sessions/s0/nope/live", headers=ORIGIN) as ws:
            ws.receive_json()


# -- security ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1:9999", "localhost.evil.example:8000", "", "10.0.0.1:8000"]
)
def test_foreign_host_refused(client, host):
    r = client.get("/api/sessions", headers={"host": host})
    assert r.status_code == 403 and "Host" in r.json()["error"]
    r = client.get("/", headers={"host": host})
    assert r.status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.2:8000"])
def test_loopback_hosts_allowed(client, host):
    assert client.get("/api/info", headers={"host": host}).status_code == 200


def test_websocket_foreign_host_refused(client, sessions):
    with pytest.raises(WebSocketDisconnect) as exc:
        with client.websocket_connect(
            f"/api/sessions/{_key(sessions[0])}/live", headers={"host": "evil.example:8000", "origin": BASE}
        ):
            pass
    assert exc.value.code == 1008


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:9999",
        "https://127.0.0.1:8000",
        "http://localhost:8000",  # another name for this server is another origin
        "file://",
        "",
        None,
    ],
)
def test_websocket_bad_origin_refused_before_accept(client, sessions, origin):
    headers = {} if origin is None else {"origin": origin}
    with pytest.raises(WebSocketDisconnect) as exc:
        with client.websocket_connect(WS + f"/api/sessions/{_key(sessions[0])}/live", headers=headers):
            pass
    assert exc.value.code == 1008


def test_websocket_same_origin_accepted(client, sessions):
    with client.websocket_connect(WS + f"/api/sessions/{_key(sessions[0])}/live", headers=ORIGIN) as ws:
        assert ws.receive_json()["status"] == "complete"


TRAVERSAL = [
    "/static/..%2F..%2Fviewer%2Fapp.py",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2Fetc%2Fpasswd",
    "/static/..%5C..%5Capp.py",
    "/static/js%2F..%2F..%2F__init__.py",
    "/static/%2e%2e/%2e%2e/viewer/app.py",
    "/static/index.html%00.js",
    "/static/C:%5Cwindows%5Cwin.ini",
    "/api/sessions/s0/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/sessions/s0/%2Fetc%2Fpasswd",
    "/api/sessions/s0/%2Fetc%2Fpasswd/tokens",
    "/api/sessions/s0/%2e%2e/tokens",
    "/api/sessions/%2e%2e/%2e%2e/frames?signal=resid",
    "/api/sessions/s0/..%5C..%5Cwindows/tokens",
    "/api/sessions/s0/abc%00def",
    "/api/sessions/s0/abc%00def/frames?signal=resid",
    "/api/sessions/s0/C:%5Cwindows",
    "/api/sessions/%2Ftmp/x",
    "/api/sessions/s0%00/x/tokens",
    "/api/sessions/s9/x",
    "/api/sessions/s0/~root/stats?signal=resid",
    "/api/sessions/s0/%252e%252e%252f/tokens",
    "/api/compare?a=..%2F..&b=s0%2Fx",
    "/api/compare?a=%2Fetc%2Fpasswd&b=s0%2Fx",
    "/etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_traversal_corpus_is_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert "root:" not in r.text and "import" not in r.text


@pytest.mark.parametrize("sid", ["nope", "20261127-000000-abcdef", "x" * 200, "a.b", "-lead"])
def test_bad_session_ids_are_404(client, sid):
    for suffix in ("", "/tokens", "/frames?signal=resid", "/stats?signal=resid"):
        assert client.get(f"/api/sessions/s0/{sid}{suffix}").status_code == 404
    assert client.get(f"/api/sessions/nostore/{sid}").status_code == 404


def test_unknown_route_is_404_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.json()["error"]


def test_token_mode(store, sessions):
    app = create_app(store, port=8000, token="sekret-token", remote=True)
    c = TestClient(app, base_url="http://box.lan:8000")
    assert c.get("/api/info").status_code == 401
    assert c.get("/api/info?token=wrong").status_code == 401
    assert c.get("/api/info", headers={"x-llmri-token": "wrong"}).status_code == 401
    assert c.get("/api/info", headers={"x-llmri-token": "sekret-token"}).status_code == 200
    r = c.get("/?token=sekret-token")
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "llmri_token_8000=sekret-token" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # the cookie jar now carries the token: static files and API calls work without it in the URL
    assert c.get("/static/js/main.js").status_code == 200
    assert c.get("/api/sessions").status_code == 200
    ws_url = f"ws://box.lan:8000/api/sessions/{_key(sessions[0])}/live"
    fresh = TestClient(app, base_url="http://box.lan:8000")
    with pytest.raises(WebSocketDisconnect):
        with fresh.websocket_connect(
            f"/api/sessions/{_key(sessions[0])}/live", headers={"origin": "http://box.lan:8000"}
        ):
            pass
    with c.websocket_connect(ws_url, headers={"origin": "http://box.lan:8000"}) as ws:
        assert ws.receive_json()["type"] == "progress"
    with pytest.raises(WebSocketDisconnect):  # the token does not excuse a foreign Origin
        with c.websocket_connect(ws_url, headers={"origin": "http://evil.example"}):
            pass


def test_remote_without_token_is_refused(store):
    with pytest.raises(ValueError):
        create_app(store, remote=True)


def test_security_helpers():
    for ok in ("s0", "20261127-091500-abcdef", "abc_DEF-1"):
        assert valid_id(ok)
    for bad in ("", "..", "a/b", "a\\b", "a\x00b", "/etc", ".hidden", "a.b", "x" * 129, "C:", "é"):
        assert not valid_id(bad), bad
    for lo in ("127.0.0.1", "localhost", "::1", "[::1]", "127.8.9.10", "LOCALHOST"):
        assert is_loopback(lo), lo
    for far in ("0.0.0.0", "10.0.0.1", "example.com", "localhost.evil", "::", ""):
        assert not is_loopback(far), far
    assert split_host("[::1]:8000") == ("::1", 8000)
    assert split_host("a b") == ("", None)
    pol = SecurityPolicy(port=8000)
    assert pol.host_ok("127.0.0.1:8000") and not pol.host_ok("127.0.0.1") and not pol.host_ok("127.0.0.1:80")
    assert SecurityPolicy(port=80).host_ok("localhost")
    assert not pol.origin_ok("http://127.0.0.1:8000", "localhost:8000")


# Plain HTTP from another site: a foreign page may link to, embed or fetch the viewer, never be served by it.
CROSS_SITE = [
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "cross-site", "origin": "http://evil.example"},
    {"sec-fetch-site": "same-site"},  # e.g. a page on another port of localhost
    {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:9999"},
    {"sec-fetch-site": "same-origin", "origin": "http://evil.example"},
    {"sec-fetch-site": "unheard-of"},
    {"origin": "http://evil.example"},
    {"origin": "null"},
    {"origin": "http://127.0.0.1:9999"},
    {"origin": "http://localhost:8000"},  # another name for this server is another origin
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_http_refused(client, sessions, headers):
    for path in ("/", "/static/js/main.js", "/api/sessions", f"/api/sessions/{_key(sessions[0])}/tokens"):
        r = client.get(path, headers=headers)
        assert r.status_code == 403, (path, headers)
        assert r.json()["error"].startswith("refused:") and "\n" not in r.json()["error"]
    assert client.options("/api/sessions", headers=headers).status_code == 403  # a CORS preflight too


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: no browser headers
        {"sec-fetch-site": "none"},  # the address bar, a bookmark
        {"sec-fetch-site": "same-origin"},  # the page's own requests
        {"sec-fetch-site": "same-origin", "origin": BASE},
        {"sec-fetch-site": "same-site", "origin": BASE},  # same-site, but its Origin proves it is this server
        {"origin": BASE},
    ],
)
def test_same_origin_and_plain_http_served(client, sessions, headers):
    for path in ("/", "/static/js/main.js", "/api/sessions", f"/api/sessions/{_key(sessions[0])}/tokens"):
        assert client.get(path, headers=headers).status_code == 200, (path, headers)


INEXACT_HOSTS = [
    "127.0.0.1:8000#.evil.com",
    "127.0.0.1:8000?x",
    "127.0.0.1:8000/",
    "127.0.0.1:8000 ",
    " 127.0.0.1:8000",
    "127.0.0.1:08000",
    "127.0.0.1:+8000",
    "127.0.0.1:8000:8000",
    "evil.com@127.0.0.1:8000",
    "127.0.0.1:8000, evil.example",  # two Host headers, as a proxy would join them
    "127.1:8000",  # browsers send the canonical form only
    "0x7f.0.0.1:8000",
    "[::1%lo]:8000",
    "[::1]x:8000",
    "[::1]:8000x",
    "127.0.0.1:",
]


@pytest.mark.parametrize("host", INEXACT_HOSTS)
def test_inexact_host_refused(client, host):
    r = client.get("/api/info", headers={"host": host})
    assert r.status_code == 403 and "Host" in r.json()["error"], host


INEXACT_ORIGINS = [
    "http://evil.com@127.0.0.1:8000",
    "http://127.0.0.1:8000/",
    "http://127.0.0.1:8000/path",
    "http://127.0.0.1:8000#frag",
    "http://127.0.0.1:8000?q",
    "http://127.0.0.1:08000",
    "HTTP://127.0.0.1:8000",
    " http://127.0.0.1:8000",
    "http://127.0.0.1:8000 ",
    "http://127.0.0.1:8000, http://evil.example",
    "http:/127.0.0.1:8000",
    "ws://127.0.0.1:8000",
]


@pytest.mark.parametrize("origin", INEXACT_ORIGINS)
def test_inexact_origin_refused(client, sessions, origin):
    with pytest.raises(WebSocketDisconnect) as exc:
        with client.websocket_connect(WS + f"/api/sessions/{_key(sessions[0])}/live", headers={"origin": origin}):
            pass
    assert exc.value.code == 1008
    assert client.get("/api/info", headers={"origin": origin}).status_code == 403


def test_host_and_origin_parsers():
    assert parse_host("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_host("LocalHost") == ("localhost", None)
    assert parse_host("[::1]:65535") == ("::1", 65535)
    assert parse_host("[0:0:0:0:0:0:0:1]") == ("::1", None)
    assert parse_host("box-1.lan:1") == ("box-1.lan", 1)
    assert parse_host("my_box:8000") == ("my_box", 8000)  # Windows machine names
    for bad in (*INEXACT_HOSTS, "", "h:0", "h:65536", "h:123456", "-h", "h-", "a..b", "h.", "a" * 64, "é", "h\n"):
        assert parse_host(bad) is None, bad
    assert parse_origin("http://127.0.0.1:8000") == ("http", "127.0.0.1", 8000)
    assert parse_origin("https://box.lan") == ("https", "box.lan", None)
    for bad in (*INEXACT_ORIGINS[:-1], "null", "", "http://", "file://", "http://a b"):
        assert parse_origin(bad) is None, bad


def test_origin_default_ports_per_scheme():
    remote = SecurityPolicy(port=8000, token="t", remote=True)
    # behind a TLS proxy that forwards "Host: box.lan": the page's Origin is https://box.lan (port 443)
    assert remote.origin_ok("https://box.lan", "box.lan") and remote.origin_ok("https://box.lan:443", "box.lan")
    assert remote.origin_ok("https://box.lan", "box.lan:443") and remote.origin_ok("http://box.lan", "box.lan")
    assert not remote.origin_ok("https://box.lan", "box.lan:80")
    assert not remote.origin_ok("https://box.lan:8443", "box.lan")
    assert not remote.origin_ok("http://box.lan", "box.lan:443")
    assert not SecurityPolicy(port=80).origin_ok("https://localhost", "localhost")  # https only behind a remote bind


def test_remote_behind_tls_proxy(store, sessions):
    app = create_app(store, port=8000, token="sekret-token", remote=True)
    c = TestClient(app, base_url="https://box.lan", headers={"x-llmri-token": "sekret-token"})
    assert c.get("/api/info", headers={"origin": "https://box.lan", "sec-fetch-site": "same-origin"}).status_code == 200
    url = f"/api/sessions/{_key(sessions[0])}/live"
    with c.websocket_connect(url, headers={"origin": "https://box.lan", "host": "box.lan"}) as ws:
        assert ws.receive_json()["type"] == "progress"
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect(url, headers={"origin": "https://box.lan:8443", "host": "box.lan"}):
            pass


def test_token_cookie_is_per_port(store):
    """Browsers send a host's cookies to every port: two remote viewers on one host must not share a name."""
    apps = {port: create_app(store, port=port, token=f"tok-{port}", remote=True) for port in (8000, 8001)}
    cookies = []
    for port, app in apps.items():
        r = TestClient(app, base_url=f"http://box.lan:{port}").get(f"/?token=tok-{port}")
        cookies.append(r.headers["set-cookie"].split(";", 1)[0])
    assert cookies == ["llmri_token_8000=tok-8000", "llmri_token_8001=tok-8001"]
    both = "; ".join(cookies)  # what the browser sends to either port
    for port, app in apps.items():
        c = TestClient(app, base_url=f"http://box.lan:{port}")
        assert c.get("/api/info", headers={"cookie": both}).status_code == 200, port
        assert c.get("/api/info", headers={"cookie": cookies[port == 8000]}).status_code == 401, port


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "referrer-policy": "no-referrer",
}


def test_every_response_carries_the_security_headers(store):
    c = TestClient(create_app(store, port=8000, live=_Raiser()), base_url=BASE, raise_server_exceptions=False)
    responses = {
        "page": c.get("/"),
        "api": c.get("/api/info"),
        "tokens": c.get(f"/api/sessions/s0/{store.chat_id}/tokens"),
        "404": c.get("/api/sessions/s0/nope"),
        "400": c.get(f"/api/sessions/s0/{store.chat_id}/frames?signal=resid"),
        "403": c.get("/api/info", headers={"host": "evil.example"}),
        "403 origin": c.get("/api/info", headers={"origin": "http://evil.example"}),
        "500": c.get("/api/raise-llmri"),
        "500 crash": c.get("/api/raise-other"),
    }
    for name, r in responses.items():
        got = {k: r.headers.get(k) for k in SECURITY_HEADERS}
        assert got == SECURITY_HEADERS, (name, r.status_code, got)
    assert responses["page"].headers["x-frame-options"] == "DENY"
    assert [r.status_code for r in responses.values()] == [200, 200, 200, 404, 400, 403, 403, 500, 500]


class _Raiser:
    """A plug-in whose routes fail inside the server with messages that name files."""

    def attach(self, app, state):
        from llmri._errors import StoreError

        @app.get("/api/raise-llmri")
        def raise_llmri() -> dict:
            raise StoreError("/home/someone/secret/run.zarr: session x: write failed")

        @app.get("/api/raise-other")
        def raise_other() -> dict:
            raise OSError("[Errno 5] Input/output error: '/home/someone/secret/run.zarr/zarr.json'")


def test_server_errors_say_one_generic_line(store, caplog):
    c = TestClient(create_app(store, port=8000, live=_Raiser()), base_url=BASE, raise_server_exceptions=False)
    with caplog.at_level("WARNING", logger="llmri.viewer"):
        for path in ("/api/raise-llmri", "/api/raise-other"):
            r = c.get(path)
            assert r.status_code == 500 and "/home/someone" not in r.text and "secret" not in r.text, r.text
            msg = r.json()["error"]
            assert "internal error" in msg and "\n" not in msg
    assert "/home/someone/secret/run.zarr: session x: write failed" in caplog.text  # the detail stays in the log


def _damaged_store(tmp_path, synthetic_model):
    """A store on disk (absolute url) with a readable session, one whose frames were cut short and one
    whose metadata is gone: (store, good, short, unreadable)."""
    import json
    import os

    import zarr

    path = tmp_path / "run.zarr"
    ids = [llmri.capture(synthetic_model, f"Hi {i}", chat=True, max_new_tokens=3, store=path).id for i in range(3)]
    store = llmri.open_store(path)
    arr = zarr.open_array(store.url, path=f"sessions/{ids[1]}/frames/resid", mode="a")
    arr.resize((2, *arr.shape[1:]))
    p = os.path.join(store.url, "sessions", ids[2], "zarr.json")
    doc = json.loads(open(p).read())
    doc["attributes"].pop("meta")
    with open(p, "w") as fh:
        json.dump(doc, fh)
    return llmri.open_store(path), *ids


def test_errors_and_labels_do_not_name_absolute_paths(tmp_path, synthetic_model):
    store, good, short, unreadable = _damaged_store(tmp_path, synthetic_model)
    assert str(tmp_path) in store.url
    c = TestClient(create_app([store], port=8000), base_url=BASE)
    answers = {
        "stores": c.get("/api/stores"),
        "sessions": c.get("/api/sessions"),
        "store sessions": c.get("/api/stores/s0/sessions"),
        "info": c.get("/api/info"),
        "500": c.get(f"/api/sessions/s0/{short}/frames", params={"signal": "resid"}),
        "404": c.get(f"/api/sessions/s0/{unreadable}"),
    }
    assert answers["500"].status_code == 500 and answers["404"].status_code == 404
    assert unreadable in answers["404"].json()["error"]
    for name, r in answers.items():
        assert str(tmp_path) not in r.text, (name, r.text)
    assert answers["stores"].json()["stores"][0]["label"] == "run.zarr"  # a store object: its last path component
    problems = answers["sessions"].json()["stores"][0]["problems"]
    assert len(problems) == 1 and unreadable in problems[0] and "run.zarr" in problems[0]
    assert c.get(f"/api/sessions/s0/{good}/tokens").status_code == 200


def test_store_labels_are_as_given(tmp_path, monkeypatch):
    llmri.open_store(tmp_path / "run.zarr", create=True)
    monkeypatch.chdir(tmp_path)
    c = TestClient(create_app(["run.zarr", llmri.open_store(tmp_path / "run.zarr")], port=8000), base_url=BASE)
    assert [s["label"] for s in c.get("/api/stores").json()["stores"]] == ["run.zarr", "run.zarr"]


# -- stores on disk and the command line ---------------------------------------------------------
def test_zarr_store_served(tmp_path, synthetic_model):
    path = tmp_path / "run.zarr"
    s = llmri.capture(synthetic_model, "Hello", chat=True, max_new_tokens=6, store=path)
    c = TestClient(create_app([path], port=8000), base_url=BASE)
    body = c.get("/api/sessions").json()
    assert [x["id"] for x in body["sessions"]] == [s.id]
    head, arr = decode_array(c.get(f"/api/sessions/s0/{s.id}/frames", params={"signal": "mlp"}).content)
    np.testing.assert_array_equal(arr, s.frames("mlp"))
    assert c.get(f"/api/sessions/s0/{s.id}/tokens").json()["total"] == len(s)


def test_empty_store(tmp_path):
    st = llmri.open_store(tmp_path / "empty.zarr", create=True)
    c = TestClient(create_app({"empty.zarr": st}, port=8000), base_url=BASE)
    body = c.get("/api/sessions").json()
    assert body["sessions"] == [] and body["stores"][0]["label"] == "empty.zarr"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmri", "view", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_cli_refusals(tmp_path):
    llmri.open_store(tmp_path / "ok.zarr", create=True)
    r = _cli(str(tmp_path / "missing.zarr"), "--no-browser")
    assert r.returncode == 1 and "missing.zarr" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli(str(tmp_path / "ok.zarr"), "--host", "0.0.0.0", "--no-browser")
    assert r.returncode == 1 and "--allow-remote" in r.stderr and "Traceback" not in r.stderr
    r = _cli(str(tmp_path / "ok.zarr"), "--port", "70000", "--no-browser")
    assert r.returncode == 1 and "port" in r.stderr and "Traceback" not in r.stderr


def test_live_plugin_is_attached(store):
    class Plugin:
        def attach(self, app, state):
            self.state = state

            @app.get("/api/plugin-ping")
            def ping() -> dict:
                return {"sessions": len(state.stores["s0"].store.session_ids())}

    plugin = Plugin()
    c = TestClient(create_app(store, port=8000, live=plugin), base_url=BASE)
    assert c.get("/api/info").json()["live"] is True
    assert c.get("/api/plugin-ping").json() == {"sessions": 4}
    assert c.get("/api/plugin-ping", headers={"host": "evil.example"}).status_code == 403  # guarded too


def test_several_stores(sessions, tmp_path):
    one, two = llmri.MemoryFrameStore(), llmri.MemoryFrameStore()
    one.add(sessions[0])
    two.add(sessions[1])
    c = TestClient(create_app({"a.zarr": one, "b.zarr": two}, port=8000), base_url=BASE)
    body = c.get("/api/sessions").json()
    assert {(s["store"], s["id"]) for s in body["sessions"]} == {("s0", sessions[0].id), ("s1", sessions[1].id)}
    assert [s["label"] for s in body["stores"]] == ["a.zarr", "b.zarr"]
    assert c.get(f"/api/sessions/s1/{sessions[1].id}/tokens").status_code == 200
    assert c.get(f"/api/sessions/s0/{sessions[1].id}/tokens").status_code == 404  # ids are per store
    r = c.get("/api/compare", params={"a": f"s0/{sessions[0].id}", "b": f"s1/{sessions[1].id}"})
    assert r.status_code == 200


class _Server:
    """``llmri view`` in a subprocess (the real uvicorn server), with the URL it printed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmri", "view", *args, "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://(\S+?):(\d+)/(\S*)", self.line)
        assert m, self.line
        self.port = int(m.group(2))
        self.query = m.group(3)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.slow
def test_real_server_guards(tmp_path, synthetic_model):
    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    path = tmp_path / "run.zarr"
    s = llmri.capture(synthetic_model, "Hello", chat=True, max_new_tokens=3, store=path)
    srv = _Server(str(path), "--port", "0")
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(f"{base}/api/info").status_code == 200
        assert httpx.get(f"{base}/api/info", headers={"host": f"evil.example:{srv.port}"}).status_code == 403
        ws = f"ws://127.0.0.1:{srv.port}/api/sessions/s0/{s.id}/live"
        with connect(ws, origin=base) as conn:
            assert '"progress"' in conn.recv(timeout=10)
        for origin in ("http://evil.example", "null"):
            with pytest.raises(InvalidStatus) as exc:
                connect(ws, origin=origin)
            assert exc.value.response.status_code == 403
    finally:
        srv.close()


@pytest.mark.slow
def test_remote_bind_needs_token(tmp_path):
    llmri.open_store(tmp_path / "run.zarr", create=True)
    import httpx

    srv = _Server(str(tmp_path / "run.zarr"), "--host", "0.0.0.0", "--port", "0", "--allow-remote")
    try:
        assert srv.query.startswith("?token=") and len(srv.query) > 20
        token = srv.query.split("=", 1)[1]
        base = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(f"{base}/api/info").status_code == 401
        assert httpx.get(f"{base}/api/info", params={"token": token}).status_code == 200
        assert httpx.get(f"{base}/api/info", headers={"x-llmri-token": token}).status_code == 200
    finally:
        srv.close()


def test_compare_names_the_reason_for_a_model_recorded_by_name_only(synthetic_model):
    # a hand-made store may hold only a name in meta["model"]: comparable() raised (a 500) on it
    from llmri.viewer.views import comparable

    a = llmri.capture(synthetic_model, "hi", max_new_tokens=2)
    b = llmri.capture(synthetic_model, "hi", max_new_tokens=2)
    a.meta["model"] = "just-a-name"
    assert comparable(a, b).startswith("different models (just-a-name no fingerprint vs ")


def test_an_unknown_signal_is_named_in_a_bounded_line():
    from llmri.store.base import check_signal

    with pytest.raises(llmri.StoreError) as info:
        check_signal("x" * 5000, ["resid"], "s0/a")
    assert len(str(info.value)) < 200 and "\n" not in str(info.value)
