"""Live chat, server side: the /api/live WebSocket over real uvicorn, real zarr stores and real clients.

Two clients at once, a client that disconnects mid-answer, a client that never reads (bounded memory),
a failure mid-answer, Stop, refusals; chat-only mode against the real llama.cpp server."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("websockets")

import llmri  # noqa: E402
from live_helpers import (  # noqa: E402
    FailingModel,
    SlowCapture,
    SlowModel,
    kill,
    receive_turn,
    start_llama_server,
)
from llmri.cli import main as cli_main  # noqa: E402
from llmri.testing import ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import ChatOnlyEngine, LiveChat, ModelEngine, check_request  # noqa: E402

HELLO = [{"role": "user", "content": "Why is the sky blue?"}]


def _serve(tmp_path, engine, **kw):
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(engine, **kw)
    served = ServedApp(create_app(store, live=live))
    return served, live, store


@pytest.fixture()
def slow_server(tmp_path):
    served, live, store = _serve(tmp_path, ModelEngine(SlowModel()), idle_stop_seconds=0.3)
    yield served, live, store
    live.close()
    served.close()


def _hello(ws) -> dict:
    msg = json.loads(ws.recv(timeout=10))
    assert msg["type"] == "hello"
    return msg


def _chat(ws, messages=HELLO, **settings) -> None:
    ws.send(json.dumps({"type": "chat", "messages": messages, "settings": settings}))


def sid_of(turn) -> str:
    return turn["done"]["session"].split("/")[1]


def _wait_idle(live, timeout=20) -> None:
    deadline = time.monotonic() + timeout
    while live.run is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.run is None, "the turn did not end"


# -- one client, one turn -----------------------------------------------------------------------------


def test_turn_streams_every_frame_and_saves_the_session(tmp_path, synthetic_model):
    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        with served.connect() as ws:
            hello = _hello(ws)
            assert hello["mode"] == "model" and hello["signals"] == ["resid", "attn", "mlp"] and not hello["running"]
            _chat(ws, max_new_tokens=12, conversation="c1", turn=0)
            turn = receive_turn(ws)
        started = next(m for m in turn["json"] if m["type"] == "started")
        assert started["messages"] == HELLO and started["signals"] == ["resid", "attn", "mlp"]
        done = turn["done"]
        assert done["status"] == "complete" and done["stop_reason"] == "max_new_tokens"
        store_id, sid = started["session"].split("/")
        assert store_id == "s0"
        s = store.session(sid)
        assert s.status == "complete" and len(s) == done["n_frames"]
        assert s.meta["live"] is True and s.meta["conversation"] == "c1" and s.meta["turn"] == 0
        # every frame came over the socket, once, in order, bit for bit what the store holds
        heads = [h for h, _, _ in turn["frames"]]
        assert heads[0]["start"] == 0 and all(a["stop"] == b["start"] for a, b in zip(heads, heads[1:], strict=False))
        assert heads[-1]["stop"] == len(s)
        tiles = np.concatenate([a for _, a, _ in turn["frames"]])
        assert tiles.dtype == np.float16 and tiles.shape == (len(s), 3, *s.frames("resid").shape[1:])
        for j, sig in enumerate(["resid", "attn", "mlp"]):
            np.testing.assert_array_equal(tiles[:, j], s.frames(sig))
        texts = [t["text"] for h in heads for t in h["tokens"]]
        assert texts == list(s.tokens.text)
        gen = [h for h in heads if h["tokens"][0]["role"] == "generated"]
        assert len(gen) == 12 and all(h["stop"] - h["start"] == 1 for h in gen)  # one message per new token
        assert all(h["t_model"] <= time.time() for h in heads)
    finally:
        served.close()


def test_multi_turn_conversation_is_one_session_per_turn(tmp_path, synthetic_model):
    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        with served.connect() as ws:
            _hello(ws)
            _chat(ws, max_new_tokens=6, conversation="conv", turn=0)
            first = receive_turn(ws)
            answer = "".join(t["text"] for h, _, _ in first["frames"] for t in h["tokens"] if t["role"] == "generated")
            history = [*HELLO, {"role": "assistant", "content": answer}, {"role": "user", "content": "And at sunset?"}]
            _chat(ws, history, max_new_tokens=6, conversation="conv", turn=1, signals=["resid"], reducer="neurons")
            second = receive_turn(ws)
        sid = second["done"]["session"].split("/")[1]
        s = store.session(sid)
        assert s.meta["messages"] == history and s.meta["turn"] == 1 and s.meta["conversation"] == "conv"
        assert s.signals == ["resid"] and s.meta["reducer"]["kind"] == "neurons"
        # the whole history is the prompt: the earlier answer's text is in this session's prompt tokens
        assert answer in s.prompt_text
        assert len(store.session_ids()) == 2
    finally:
        served.close()


# -- several clients -------------------------------------------------------------------------------------


def test_two_clients_watch_the_same_turn_and_a_second_request_is_refused(slow_server):
    served, live, store = slow_server
    with served.connect() as a, served.connect() as b:
        _hello(a)
        _hello(b)
        _chat(a, max_new_tokens=20)
        first_b = json.loads(b.recv(timeout=10))
        assert first_b["type"] == "started"
        _chat(b, [{"role": "user", "content": "me too"}], max_new_tokens=5)
        got_a, got_b = receive_turn(a), receive_turn(b)
    busy = [m for m in got_b["json"] if m["type"] == "busy"]
    assert len(busy) == 1 and "another page" in busy[0]["message"] and "Stop" in busy[0]["message"]
    assert [raw for _, _, raw in got_a["frames"]] == [raw for _, _, raw in got_b["frames"]]
    assert got_a["done"] == got_b["done"] and got_a["done"]["status"] == "complete"
    assert len(store.session_ids()) == 1  # the refused request recorded nothing


def test_a_page_opened_mid_answer_learns_of_the_running_turn(slow_server):
    served, live, store = slow_server
    with served.connect() as a:
        _hello(a)
        _chat(a, max_new_tokens=40)
        json.loads(a.recv(timeout=10))  # started
        time.sleep(0.3)
        with served.connect() as late:
            hello = _hello(late)
            assert hello["running"]["session"].startswith("s0/") and hello["running"]["messages"] == HELLO
            turn = receive_turn(late)
            assert turn["frames"] and turn["frames"][0][0]["start"] > 0  # it joined late: the rest is in the store
        receive_turn(a)


def test_stop_ends_the_turn_and_keeps_what_was_generated(slow_server):
    served, live, store = slow_server
    with served.connect() as ws:
        _hello(ws)
        _chat(ws, max_new_tokens=200)
        n_gen = 0
        t_stop = None
        frames = 0
        while True:
            msg = ws.recv(timeout=20)
            if isinstance(msg, bytes):
                frames += 1
                from llmri.viewer.encoding import decode_array

                h, _ = decode_array(msg)
                if h["tokens"][0]["role"] == "generated":
                    n_gen += 1
                    if n_gen == 5:
                        ws.send(json.dumps({"type": "stop"}))
                        t_stop = time.monotonic()
                continue
            data = json.loads(msg)
            if data["type"] == "done":
                break
        stopped_in = time.monotonic() - t_stop
    assert data["status"] == "complete" and data["stop_reason"] == "stopped"
    assert 5 <= n_gen <= 8 and stopped_in < 1.0  # at once: within a forward or two of the slow model
    s = store.session(data["session"].split("/")[1])
    assert s.status == "complete" and len(s) == data["n_frames"] and s.meta["stop_reason"] == "stopped"
    assert s.tokens.role.count("generated") == n_gen


@pytest.mark.slow
def test_disconnect_mid_answer_stops_the_turn_and_keeps_it(slow_server):
    served, live, store = slow_server
    with served.connect() as ws:
        _hello(ws)
        _chat(ws, max_new_tokens=300)
        for _ in range(40):
            ws.recv(timeout=10)
    # the page is gone and nobody else watches: after idle_stop_seconds the turn stops
    _wait_idle(live)
    (sid,) = store.session_ids()
    s = store.session(sid)
    assert s.status == "complete" and s.meta["stop_reason"] == "stopped"
    assert 0 < s.tokens.role.count("generated") < 300
    # the server carries on: a new page gets a hello and can chat
    with served.connect() as again:
        assert _hello(again)["running"] is None
        _chat(again, max_new_tokens=3)
        assert receive_turn(again)["done"]["status"] == "complete"


def test_a_reload_mid_answer_does_not_stop_it(slow_server):
    served, live, store = slow_server
    with served.connect() as ws:
        _hello(ws)
        _chat(ws, max_new_tokens=30)
        ws.recv(timeout=10)
    with served.connect() as back:  # back within idle_stop_seconds, as a reloaded page is
        hello = _hello(back)
        assert hello["running"] is not None
        done = receive_turn(back)["done"]
    assert done["stop_reason"] == "max_new_tokens"


def _raw_ws_never_reading(port: int) -> socket.socket:
    """A WebSocket handshake by hand on a socket with a tiny receive buffer, then never a read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.slow
def test_a_client_that_never_reads_cannot_make_the_server_buffer_without_bound(tmp_path):
    limit = 3 << 20  # above a batch of prompt frames (32 x 37 KB), far below the 18 MB streamed
    # far more than the kernel's socket buffers can absorb (the server's send buffer autotunes to a few MiB)
    model = SlowModel(n_layers=24, d_model=128, reply="x" * 500)
    SlowCapture.delay = 0.0
    try:
        served, live, store = _serve(tmp_path, ModelEngine(model), client_queue_bytes=limit)
        stuck = _raw_ws_never_reading(served.port)
        try:
            with served.connect() as reader:
                _hello(reader)
                _chat(reader, max_new_tokens=500)
                turn = receive_turn(reader, timeout=120)
                biggest = max(len(raw) for _, _, raw in turn["frames"])  # a batch of prompt frames
                total = sum(len(raw) for _, _, raw in turn["frames"])
                q = live.stats()
            stuck_id = min(q)  # the stuck socket connected first
            assert total > 5 * limit  # far more was streamed than the stuck client may hold
            assert q[stuck_id]["dropped"] >= 1  # it fell behind and was told to catch up from the store
            assert q[stuck_id]["peak_bytes"] <= limit + biggest
            assert turn["done"]["status"] == "complete"
            assert turn["done"]["n_frames"] == turn["frames"][-1][0]["stop"] == len(store.session(sid_of(turn)))
            # the reading client lost nothing and never had to resync
            assert not [m for m in turn["json"] if m["type"] == "resync"]
        finally:
            stuck.close()
            live.close()
            served.close()
    finally:
        SlowCapture.delay = 0.03


def test_a_failure_mid_answer_is_one_clear_message_and_the_server_keeps_running(tmp_path):
    served, live, store = _serve(tmp_path, ModelEngine(FailingModel()))
    try:
        with served.connect() as ws:
            _hello(ws)
            _chat(ws, max_new_tokens=30)
            turn = receive_turn(ws)
            errors = [m for m in turn["json"] if m["type"] == "error"]
            assert len(errors) == 1 and "simulated device failure" in errors[0]["message"]
            assert "\n" not in errors[0]["message"] and "Traceback" not in errors[0]["message"]
            assert turn["done"]["status"] == "interrupted"
            s = store.session(turn["done"]["session"].split("/")[1])
            assert s.status == "interrupted" and s.tokens.role.count("generated") == 5
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=5))["type"] == "pong"
        import httpx

        assert httpx.get(served.url + "/api/info").json()["live"] is True
    finally:
        served.close()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("not json", "not JSON"),
        ({"type": "chat", "messages": []}, "non-empty list"),
        ({"type": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"type": "chat", "messages": [{"role": "assistant", "content": "x"}]}, "last message"),
        ({"type": "chat", "messages": HELLO, "settings": {"max_new_tokens": 10**6}}, "max_new_tokens"),
        ({"type": "chat", "messages": HELLO, "settings": {"temperature": -1}}, "temperature"),
        ({"type": "chat", "messages": HELLO, "settings": {"signals": ["bogus"]}}, "unknown signal"),
        ({"type": "chat", "messages": HELLO, "settings": {"reducer": "magic"}}, "reducer"),
        ({"type": "teleport"}, "unknown message type"),
        # an integer literal of 400 digits (JSON integers have no size limit): refused, not overflowed
        ({"type": "chat", "messages": HELLO, "settings": {"seed": 10**400}}, "seed must be between"),
        ({"type": "chat", "messages": HELLO, "settings": {"max_new_tokens": -(10**400)}}, "max_new_tokens"),
        ({"type": "chat", "messages": HELLO, "settings": {"temperature": 10**400}}, "temperature"),
        ({"type": "chat", "messages": HELLO, "settings": {"seed": "9" * 400}}, "seed"),
        ({"type": "chat", "messages": HELLO, "settings": {"seed": 1.5}}, "whole number"),
        ('{"type": "chat", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ("[" * 100_000, "nested too deeply"),
        ({"type": "chat", "messages": HELLO, "settings": {"seed": [[[[[[1]]]]]]}}, "seed must be a number"),
        ({"type": ["x" * 5000]}, "unknown message type"),
    ],
)
def test_bad_requests_get_one_line_and_the_socket_stays_open(tmp_path, synthetic_model, payload, needle):
    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        with served.connect() as ws:
            _hello(ws)
            ws.send(payload if isinstance(payload, str) else json.dumps(payload))
            msg = json.loads(ws.recv(timeout=5))
            assert msg["type"] == "error" and needle in msg["message"]
            assert "\n" not in msg["message"] and len(msg["message"]) < 200, msg["message"]
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=5))["type"] == "pong"
        assert store.session_ids() == []
    finally:
        served.close()


def test_after_hostile_messages_a_good_one_still_chats(tmp_path, synthetic_model, caplog):
    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    hostile = [
        json.dumps({"type": "chat", "messages": HELLO, "settings": {"seed": 10**400}}),
        json.dumps({"type": "chat", "messages": HELLO, "settings": {"max_new_tokens": 10**400}}),
        "{" * 50_000 + "}" * 50_000,
        '{"a": ' * 100_000 + "1" + "}" * 100_000,
    ]
    try:
        with served.connect() as ws:
            _hello(ws)
            for text in hostile:
                ws.send(text)
                assert json.loads(ws.recv(timeout=5))["type"] == "error"
            _chat(ws, max_new_tokens=3, seed=7)
            turn = receive_turn(ws)
        assert turn["done"]["status"] == "complete" and len(store.session_ids()) == 1
        assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text
    finally:
        served.close()


def test_the_live_socket_refuses_foreign_origins_and_hosts(tmp_path, synthetic_model):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        for kw in ({"origin": "http://evil.example"}, {}, {"origin": "null"}):
            with pytest.raises(InvalidStatus) as err:
                connect(served.ws_url, **kw).close()
            assert err.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            connect(served.ws_url, origin="http://evil.example", additional_headers={"Host": "evil.example"}).close()
    finally:
        served.close()


def test_the_live_socket_refuses_inexact_origins(tmp_path, synthetic_model):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        p = served.port
        for origin in (f"http://evil.example@127.0.0.1:{p}", f"{served.url}/", f"{served.url}/x", f"{served.url}#x"):
            with pytest.raises(InvalidStatus) as err:
                connect(served.ws_url, origin=origin).close()
            assert err.value.response.status_code == 403, origin
        with served.connect() as ws:  # the exact Origin still works
            assert _hello(ws)["mode"] == "model"
    finally:
        served.close()


def _raw_get(port: int, host: str, path: str = "/api/info", extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written by hand (the Host header byte for byte): ``(status, headers, body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.fixture()
def viewer_server(tmp_path, synthetic_model):
    store = llmri.open_store(tmp_path / "run.zarr", create=True)
    s = llmri.capture(synthetic_model, "Hello", chat=True, max_new_tokens=3, store=store)
    served = ServedApp(create_app(store))
    yield served, s
    served.close()


def test_real_server_refuses_inexact_host_headers(viewer_server):
    served, _ = viewer_server
    p = served.port
    assert _raw_get(p, f"127.0.0.1:{p}")[0] == 200
    for host in (f"127.0.0.1:{p}#.evil.com", f"127.0.0.1:{p}?x", f"127.0.0.1:0{p}", f"evil.com@127.0.0.1:{p}", "127.1"):
        status, _, body = _raw_get(p, host)
        assert status == 403 and b"Host" in body, (host, status)
    # (a trailing space is optional whitespace that the HTTP parser strips, as RFC 9110 says: in-process tests
    # check that the policy refuses it when it does reach the app)


def test_real_server_refuses_cross_site_http(viewer_server):
    served, s = viewer_server
    p = served.port
    for extra in ("Sec-Fetch-Site: cross-site\r\n", "Origin: http://evil.example\r\n", "Sec-Fetch-Site: same-site\r\n"):
        for path in ("/", "/api/sessions", f"/api/sessions/s0/{s.id}/frames?signal=resid"):
            assert _raw_get(p, f"127.0.0.1:{p}", path, extra)[0] == 403, (extra, path)
    for extra in ("", "Sec-Fetch-Site: none\r\n", f"Sec-Fetch-Site: same-origin\r\nOrigin: {served.url}\r\n"):
        assert _raw_get(p, f"127.0.0.1:{p}", "/", extra)[0] == 200, extra


def test_real_server_does_not_name_itself_and_isolates_its_responses(viewer_server):
    served, s = viewer_server
    p = served.port
    ok = f"127.0.0.1:{p}"
    cases = [(ok, "/"), (ok, "/api/info"), (ok, f"/api/sessions/s0/{s.id}/frames?signal=resid"), (ok, "/nope"),
             ("evil.example", "/api/info"), (ok, "/api/sessions/s0/nope")]  # fmt: skip
    for host, path in cases:
        status, headers, _ = _raw_get(p, host, path)
        assert "server" not in headers, (path, headers)
        assert headers.get("cross-origin-resource-policy") == "same-origin", (path, status)
        assert headers.get("cross-origin-opener-policy") == "same-origin", (path, status)
        assert headers.get("x-content-type-options") == "nosniff", (path, status)
        assert "date" in headers


def test_the_live_socket_declines_per_message_deflate(tmp_path, synthetic_model):
    """Browsers offer permessage-deflate; zlib on every frame would cost the model's CPU for nothing."""
    from websockets.sync.client import connect

    from llmri.viewer.serve import server_config

    served, live, store = _serve(tmp_path, ModelEngine(synthetic_model))
    try:
        assert server_config(served.app).ws_per_message_deflate is False  # what `llmri view` serves with
        with connect(served.ws_url, origin=served.url, compression="deflate") as ws:  # offers it, as browsers do
            assert _hello(ws)["mode"] == "model"
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    finally:
        served.close()


def test_check_request_defaults(synthetic_model):
    engine = ModelEngine(synthetic_model)
    msgs, s = check_request({"messages": HELLO}, engine)
    assert msgs == HELLO
    assert s["max_new_tokens"] == 128 and s["temperature"] == 0.0 and s["signals"] == ["resid", "attn", "mlp"]
    assert s["reducer"] == "random" and len(s["conversation"]) == 12 and s["turn"] == 0


# -- the command line ----------------------------------------------------------------------------------


def test_view_live_options_fail_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMRI_NO_SUCH_KEY", raising=False)
    store = str(tmp_path / "new.zarr")
    cases = [
        (["--model", "default", "--openai-url", "http://127.0.0.1:9/v1"], "not both"),
        (["--openai-url", "ftp://example.com"], "http(s) base URL"),
        (["--openai-url", "http://127.0.0.1:9/v1", "--api-key-env", "LLMRI_NO_SUCH_KEY"], "not set"),
        (["--model", str(tmp_path / "nope")], "no such file"),
    ]
    for extra, needle in cases:
        assert cli_main(["view", store, "--no-browser", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


# -- chat-only mode against the real llama.cpp server -------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield proc, url
    kill(proc)


@pytest.mark.slow
def test_chat_only_turn_over_the_socket(tmp_path, llama):
    from llmri.chatonly import ChatOnlyClient

    secret = "sk-live-test-SECRET-91"
    client = ChatOnlyClient(llama[1], api_key=secret)
    served, live, store = _serve(tmp_path, ChatOnlyEngine(client))
    try:
        with served.connect() as ws:
            raw_hello = ws.recv(timeout=10)
            hello = json.loads(raw_hello)
            assert hello["mode"] == "chat-only" and hello["url"] == llama[1] and hello["signals"] == []
            _chat(ws, max_new_tokens=12)
            turn = receive_turn(ws, timeout=120)
        assert turn["done"]["status"] == "complete"
        for h, a, _ in turn["frames"]:
            assert a.shape == (h["stop"] - h["start"], 0)  # no activations in this mode
        gen = [t for h, _, _ in turn["frames"] for t in h["tokens"] if t["role"] == "generated"]
        assert 1 <= len(gen) <= 12
        assert all(t["logprob"] is not None and t["logprob"] <= 0 and t["top"] for t in gen)
        assert all(t["entropy"] is not None and t["entropy"] >= 0 for t in gen)
        s = store.session(turn["done"]["session"].split("/")[1])
        assert s.chat_only and s.meta["backend"] == "openai" and s.meta["live"] is True
        everything = raw_hello + json.dumps(turn["json"]) + "".join(json.dumps(h) for h, _, _ in turn["frames"])
        assert secret not in everything and secret not in json.dumps(s.meta)
    finally:
        live.close()
        served.close()


def _failed_turn(ws) -> tuple[str, dict]:
    """Chat once on a fresh socket: the turn ends interrupted with exactly one error message, and the
    socket still answers afterwards. Returns that message and the turn."""
    _hello(ws)
    _chat(ws, max_new_tokens=4)
    turn = receive_turn(ws, timeout=30)
    (err,) = [m for m in turn["json"] if m["type"] == "error"]
    assert turn["done"]["status"] == "interrupted"
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv(timeout=5))["type"] == "pong"
    return err["message"], turn


def test_chat_only_upstream_down_is_a_clear_message(tmp_path):
    from live_helpers import free_port
    from llmri.chatonly import ChatOnlyClient

    client = ChatOnlyClient(f"http://127.0.0.1:{free_port()}/v1", timeout=5)  # nothing listens there
    served, live, store = _serve(tmp_path, ChatOnlyEngine(client))
    try:
        with served.connect() as ws:
            message, _ = _failed_turn(ws)
            assert "cannot reach" in message and "refused" in message
    finally:
        live.close()
        served.close()


# -- llmri demo: the README's first command ------------------------------------------------------------------


@pytest.mark.slow
def test_llmri_demo_starts_the_viewer_with_live_chat(tmp_path):
    import re
    import subprocess
    import sys

    import httpx
    from websockets.sync.client import connect

    store = tmp_path / "demo.zarr"
    cmd = [
        sys.executable,
        "-m",
        "llmri",
        "demo",
        "--store",
        str(store),
        "--no-browser",
        "--port",
        "0",
        "--max-new-tokens",
        "4",
    ]
    proc = subprocess.Popen(
        [*cmd, "--max-new-tokens", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 300
        url = ""
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"serving .* at (http://\S+)", line)
            url = m.group(1) if m else ""
        assert url.startswith("http://127.0.0.1:"), "".join(lines)
        text = "".join(lines)
        assert "capturing an example conversation" in text and "live chat" in text
        assert httpx.get(url + "api/info").json()["live"] is True
        ws_url = url.replace("http://", "ws://") + "api/live"
        with connect(ws_url, origin=url.rstrip("/"), max_size=None) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["mode"] == "model" and hello["model"] == "SmolLM2-135M-Instruct" and hello["n_layers"] == 30
            _chat(ws, max_new_tokens=3)
            assert receive_turn(ws, timeout=120)["done"]["status"] == "complete"
        assert len(llmri.open_store(store).session_ids()) == 2  # the demo's capture, then the live turn
    finally:
        kill(proc)


class _Upstream(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible server for failures a real one will not produce on cue."""

    mode = "malformed"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"data": [{"id": "scripted"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "missing-model":
            body = json.dumps({"error": {"message": "model 'scripted' not found"}}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: {this is not json\n\n")
        self.wfile.flush()


@pytest.mark.parametrize(
    ("mode", "needles"), [("malformed", ["malformed stream", "not JSON"]), ("missing-model", ["HTTP 404", "not found"])]
)
def test_chat_only_upstream_failures_show_one_line(tmp_path, mode, needles):
    from llmri.chatonly import ChatOnlyClient

    handler = type("Upstream", (_Upstream,), {"mode": mode})
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    client = ChatOnlyClient(f"http://127.0.0.1:{upstream.server_address[1]}/v1", timeout=10)
    served, live, store = _serve(tmp_path, ChatOnlyEngine(client))
    try:
        with served.connect() as ws:
            message, turn = _failed_turn(ws)
            assert all(x in message for x in needles) and "\n" not in message, message
            s = store.session(sid_of(turn))
            assert s.chat_only and s.status == "interrupted"
    finally:
        live.close()
        served.close()
        upstream.shutdown()


def test_a_turn_that_fails_before_its_frames_closes_its_session(synthetic_model, tmp_path):
    # a failure between the stream's open and its first frame (here: posting 'started') used to leave
    # the new session 'recording' for good
    from llmri.viewer.live.turn import Turn

    engine = ModelEngine(synthetic_model)
    messages, settings = check_request({"messages": HELLO, "max_new_tokens": 3}, engine)
    store = llmri.open_store(tmp_path / "t.zarr", create=True)
    posted = []

    def post(item, key):
        if isinstance(item, str) and '"started"' in item:
            raise RuntimeError("the client went away")
        posted.append(item)

    done = Turn(by=1, messages=messages, settings=settings).generate(engine, lambda: store, "s0", post)
    assert done["status"] == "interrupted" and "RuntimeError" in done["stop_reason"]
    (session,) = llmri.open_store(tmp_path / "t.zarr").sessions()
    assert session.status == "interrupted"
