"""The notebook widget's Python side (llmri.notebook), without a browser: it answers the client's requests
exactly as ``llmri view``'s HTTP server does (byte for byte), serves only what it was given, carries a
recording session's /live progress while a stream runs on its thread, shows a failed stream in one line;
outside a notebook ``show()`` says what to run instead, in one line; the capture's progress bar."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("anywidget")
pytest.importorskip("fastapi")

import llmri  # noqa: E402
from llmri.notebook import NotebookError, in_notebook  # noqa: E402
from llmri.notebook.widget import Viewer  # noqa: E402
from llmri.testing import ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402

pytestmark = pytest.mark.slow


class Recorder:
    """Stands in for the comm: what the widget sends to the browser, in order."""

    def __init__(self, widget: Viewer) -> None:
        self.q: queue.Queue = queue.Queue()
        widget.send = lambda content, buffers=None: self.q.put((content, list(buffers or [])))  # type: ignore[method-assign]
        self.widget = widget
        self.n = 0

    def get(self, url: str) -> tuple[int, str, bytes]:
        """A request as widget.js sends it, and the widget's reply."""
        self.n += 1
        rid = f"test:{self.n}"
        self.widget._handle_custom_msg({"op": "get", "id": rid, "url": url}, [])
        content, buffers = self.next(lambda c: c.get("id") == rid)
        assert content["op"] == "reply"
        return content["status"], content["type"], bytes(buffers[0])

    def next(self, match, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            content, buffers = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if match(content):
                return content, buffers


def http_get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


@pytest.fixture(scope="module")
def two_sessions(real_model):
    a = llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=10)
    b = llmri.capture(real_model, "Why is grass green?", chat=True, max_new_tokens=10)
    return a, b


def test_every_request_is_answered_as_the_http_server_answers_it(two_sessions):
    a, b = two_sessions
    widget = Viewer([a, b])
    served = ServedApp(create_app(widget.stores))
    try:
        rec = Recorder(widget)
        base = f"/api/sessions/s0/{a.id}"
        urls = [
            "/",
            "/static/js/main.js",
            "/static/js/api.js",
            "/static/app.css",
            "/api/info",
            "/api/colormaps",
            "/api/stores",
            "/api/sessions",
            base,
            f"{base}/tokens",
            f"{base}/tokens?start=5&stop=9",
            f"{base}/frames?signal=resid&start=0&stop=16",
            f"{base}/frames?signal=resid,mlp&start=16&stop=32",
            f"{base}/frames?signal=attn&start=0&stop=8&dtype=uint8",
            f"{base}/stats?signal=mlp",
            f"/api/compare?a=s0/{a.id}&b=s0/{b.id}",
            f"{base}/frames?signal=nope",  # 400
            "/api/sessions/s0/no-such-session",  # 404
            "/api/sessions/s9/x",  # 404
            "/static/no-such.js",  # 404
        ]
        statuses = set()
        for url in urls:
            mine, theirs = rec.get(url), http_get(served.url + url)
            assert mine == theirs, url
            statuses.add(mine[0])
        assert statuses >= {200, 400, 404}
        assert rec.get("http://example.com/")[0] == 400  # a path only, never a URL elsewhere
    finally:
        served.close()
        widget.close()


def test_only_what_was_given_is_served(real_model, two_sessions, tmp_path):
    a, b = two_sessions
    widget = Viewer(a)
    rec = Recorder(widget)
    listed = json.loads(rec.get("/api/sessions")[2])
    assert [s["key"] for s in listed["sessions"]] == [f"s0/{a.id}"] and widget.session == f"s0/{a.id}"
    assert rec.get(f"/api/sessions/s0/{b.id}")[0] == 404
    widget.close()
    # a store is served as itself, opened on the session asked for; a label names it
    path = tmp_path / "run.zarr"
    store = llmri.open_store(path, create=True)
    ids = [llmri.capture(real_model, "Hi", max_new_tokens=2, store=store).id for _ in range(2)]
    widget = Viewer({"mine": path}, session=ids[0])
    rec = Recorder(widget)
    assert [s["label"] for s in json.loads(rec.get("/api/stores")[2])["stores"]] == ["mine"]
    assert widget.session == f"s0/{ids[0]}"
    assert sorted(s["id"] for s in json.loads(rec.get("/api/sessions")[2])["sessions"]) == sorted(ids)
    widget.close()
    with pytest.raises(NotebookError, match="cannot show a int"):
        Viewer(42)


def test_a_stream_is_followed_over_the_live_socket_as_it_records(real_model):
    stream = llmri.stream(real_model, "Count from one to ten.", chat=True, max_new_tokens=16)
    widget = Viewer(stream)
    rec = Recorder(widget)
    key = widget.session
    assert key.startswith("s0/") and len(widget.sessions) == 1  # returned before the capture ended
    widget._handle_custom_msg({"op": "ws-open", "id": "test:ws", "url": f"/api/sessions/{key}/live"}, [])
    events = []
    while True:
        content, _ = rec.next(lambda c: c.get("id") == "test:ws", timeout=300)
        events.append(content)
        if content["event"] == "close":
            break
    assert events[0]["event"] == "open"
    assert events[-1] == {"op": "ws", "id": "test:ws", "event": "close", "code": 1000, "reason": ""}
    progress = [json.loads(e["data"]) for e in events if e["event"] == "text"]
    recording = [p["n_frames"] for p in progress if p["status"] == "recording"]
    assert len(set(recording)) >= 2 and recording == sorted(recording), progress
    session = widget.wait(60)
    assert (progress[-1]["n_frames"], progress[-1]["status"]) == (len(session), "complete")
    assert session.status == "complete" and widget.error == ""
    # the frames the client then asks for are the session's
    status, _, body = rec.get(f"/api/sessions/{key}/frames?signal=resid&start=0&stop=16")
    assert status == 200 and len(body) > 16 * len(session.layers) * 2
    widget.close()


def test_a_stream_that_fails_is_shown_in_one_line_and_the_kernel_goes_on(real_model):
    stream = llmri.stream(real_model, "Hi", max_new_tokens=4)

    def broken():
        raise RuntimeError("the backend broke\nwith a second line")
        yield  # a generator

    stream._produce = broken  # type: ignore[method-assign]
    widget = Viewer(stream)
    session = widget.wait(60)
    assert session.status == "interrupted"
    assert widget.error == "llmri: the capture stopped: RuntimeError: the backend broke with a second line"
    widget.close()


def test_show_outside_a_notebook_says_what_to_run_in_one_line(two_sessions, tmp_path, capsys):
    a, _ = two_sessions
    assert not in_notebook()
    assert llmri.show(a) is None and a.show() is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == err[1]
    assert "Jupyter notebook" in err[0] and "`llmri view run.zarr`" in err[0]
    assert llmri.show(tmp_path / "x.zarr") is None
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"run `llmri view {tmp_path / 'x.zarr'}`")


def test_the_progress_bar_counts_tokens_per_second(real_model, capsys, monkeypatch):
    from llmri.capture import progressbar as progress

    monkeypatch.setattr(progress, "DELAY", 0)
    stream = llmri.stream(real_model, "Hi", max_new_tokens=6)
    assert progress.tracked(stream, None, 10) is stream  # no notebook here: no bar unless asked
    session = llmri.Session.collect(progress.tracked(stream, True, len(stream.prompt_ids) + 6))
    err = capsys.readouterr().err
    assert f"{len(session)}/{len(session)}" in err and "tok/s" in err
    assert progress.tracked(stream, False, 10) is stream
