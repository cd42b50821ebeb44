"""The viewer in a real browser: `llmri view` as a subprocess over a store captured from the real model,
driven by headless Chromium through Playwright. Screenshots land in artifacts/ (gitignored)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

from llmri.testing import CHROMIUM  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer:
    """`python -m llmri view PATH` in a subprocess; ``url`` is what it printed."""

    def __init__(self, *paths: Path) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "llmri", "view", *map(str, paths), "--port", str(self.port), "--no-browser"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"http://\S+", line)
        if not m:
            self.close()
            raise RuntimeError(f"llmri view did not start: {line!r}")
        self.url = m.group(0)
        self.log: list[str] = []
        # keep draining the server's output: a full pipe would block the server
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout or ():
            self.log.append(line)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def store_path(real_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("viewer") / "run.zarr"
    llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=12, store=path)
    llmri.capture(real_model, "Why is grass green?", chat=True, max_new_tokens=8, store=path)
    llmri.capture(real_model, "Hi!", chat=True, max_new_tokens=4, store=path, reducer="neurons")
    return path


@pytest.fixture(scope="module")
def viewer(store_path):
    v = Viewer(store_path)
    yield v
    v.close()


@pytest.fixture()
def page(browser, viewer):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(viewer.url)
    pg.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
    open_session(pg, "Why is the sky blue?")
    yield pg
    ctx.close()
    # a refused comparison is an expected 409, which the browser logs as a failed resource
    assert not [e for e in errors if "409 (Conflict)" not in e], errors
    assert not [x for x in viewer.log if "Traceback" in x or "ERROR" in x], "".join(viewer.log)


def open_session(pg, title: str) -> None:
    key = pg.evaluate(f"window.llmri.state.sessions.find(s => s.title === {title!r}).key")
    pg.select_option("#session-select", key)
    pg.wait_for_function(f"window.llmri.state.loaded === {key!r}")
    seek(pg, 0)


def seek(pg, t: int) -> None:
    pg.evaluate(f"window.llmri.seek({t})")
    pg.wait_for_function(f"window.llmri.drawn === {t}", timeout=15000)


def now(pg) -> int:
    return pg.evaluate("window.llmri.state.t")


def pixels(pg) -> dict:
    """Summary of the main canvas: non-background pixel count, distinct colours, grey fraction, a hash."""
    return pg.evaluate(
        """() => {
          const c = document.getElementById('view');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let lit = 0, grey = 0, h = 0; const seen = new Set();
          for (let i = 0; i < d.length; i += 4) {
            const r = d[i], g = d[i+1], b = d[i+2];
            if (!(r === 11 && g === 15 && b === 20)) { lit++; if (r === g && g === b) grey++; }
            if (seen.size < 5000) seen.add((r << 16) | (g << 8) | b);
            h = (h * 31 + r * 7 + g * 3 + b) >>> 0;
          }
          return {lit, grey, colours: seen.size, hash: h, w: c.width, h: c.height};
        }"""
    )


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"viewer_{name}.png"))


def tile_centre(pg, grid: int, layer: int) -> tuple[float, float]:
    box = pg.locator("#view").bounding_box()
    x, y = pg.evaluate(
        f"""() => {{ const L = window.llmri.renderer.layout; const g = L.grids[{grid}];
          const [x, y] = window.llmri.renderer.tileXY(g, {layer}); return [x + L.D / 2, y + L.E / 2]; }}"""
    )
    return box["x"] + x, box["y"] + y


# ------------------------------------------------------------------------------------------------
def test_tiles_draw_and_change_between_tokens(page):
    seek(page, 5)
    a = pixels(page)
    assert a["w"] > 300 and a["h"] > 150
    assert a["lit"] > 0.3 * a["w"] * a["h"] * 0.5, a  # tiles cover a good part of the canvas
    assert a["colours"] > 50, a  # not a flat fill
    assert page.locator("#overlay").is_visible()
    shot(page, "grayscale")
    seek(page, 6)
    b = pixels(page)
    assert b["hash"] != a["hash"], "frames of two tokens must differ"
    assert page.locator("#tokens .t.cur").get_attribute("data-i") == "6"
    assert page.locator("#counter").inner_text().startswith("token 7 /")


def test_save_png(page, tmp_path):
    seek(page, 5)
    with page.expect_download() as info:
        page.click("#save-png")
    dl = info.value
    assert re.fullmatch(r"llmri-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}-t5-all-grayscale\.png", dl.suggested_filename)
    out = tmp_path / dl.suggested_filename
    dl.save_as(out)
    from PIL import Image

    img = Image.open(out)
    w, h = page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]")
    assert img.size == (w, h)  # devicePixelRatio 1 here
    assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_slider(page):
    n = page.evaluate("window.llmri.state.src.total")
    box = page.locator("#slider").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    page.wait_for_function("window.llmri.drawn === window.llmri.state.t")
    t = now(page)
    assert abs(t - 0.75 * (n - 1)) <= max(2, n * 0.05), (t, n)
    assert page.locator("#slider").input_value() == str(t)
    page.locator("#slider").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"window.llmri.drawn === {t + 1}")
    assert now(page) == t + 1  # one step, not two (the slider's own key handling is replaced)


def test_play_pause(page):
    page.select_option("#speed", "25")
    page.click("#play")
    page.wait_for_function("window.llmri.state.t >= 8", timeout=15000)
    page.click("#play")
    t = now(page)
    page.wait_for_timeout(400)
    assert now(page) == t
    assert page.locator("#play").inner_text() == "▶"


def test_arrow_keys(page):
    page.locator("#view").click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("window.llmri.drawn === 3")
    page.keyboard.press("Shift+ArrowRight")
    page.wait_for_function("window.llmri.drawn === 13")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("window.llmri.drawn === 12")
    page.keyboard.press("End")
    last = page.evaluate("window.llmri.state.src.total - 1")
    page.wait_for_function(f"window.llmri.drawn === {last}")
    page.keyboard.press("Home")
    page.wait_for_function("window.llmri.drawn === 0")


def test_colour_map_switch(page):
    seek(page, 4)
    grey = pixels(page)
    assert grey["grey"] == grey["lit"], "grayscale draws only grey pixels"
    page.click("#cmap button[data-v=energy]")
    page.wait_for_function("window.llmri.state.cmap === 'energy'")
    energy = pixels(page)
    assert energy["grey"] < 0.2 * energy["lit"] and energy["hash"] != grey["hash"]
    shot(page, "energy")
    page.click("#cmap button[data-v=diverging]")
    assert pixels(page)["hash"] != energy["hash"]
    page.click("#norm button[data-v=global]")
    glob = pixels(page)
    page.click("#norm button[data-v=layer]")
    assert pixels(page)["hash"] != glob["hash"]
    page.click("#signal-mode button[data-v=composite]")
    comp = pixels(page)
    assert comp["grey"] < comp["lit"]
    shot(page, "composite")
    page.click("#signal-mode button[data-v=all]")


def test_window_level_and_sparsity(page):
    seek(page, 4)
    a = pixels(page)
    page.locator("#window").fill("0.3")
    b = pixels(page)
    assert b["hash"] != a["hash"]
    assert page.locator("#window-out").inner_text() == "0.30"
    page.click("#reset-wl")
    assert pixels(page)["hash"] == a["hash"]
    page.check("#sparsity")
    c = pixels(page)
    assert c["hash"] != a["hash"] and c["grey"] < c["lit"]  # sparsity tints the grayscale map
    shot(page, "sparsity")
    page.uncheck("#sparsity")


def test_hover_readout(page):
    seek(page, 3)
    x, y = tile_centre(page, 0, 7)
    page.mouse.move(x, y)
    readout = page.locator("#readout").inner_text()
    assert re.search(r"layer\s+7\b", readout), readout
    assert "resid" in readout and "pixel" in readout
    value = float(page.locator("#readout .big").inner_text())
    assert page.locator("#tooltip").is_visible()
    assert "L7" in page.locator("#tooltip").inner_text()
    # the readout's value is the stored value of that pixel
    want = page.evaluate(
        """() => { const h = window.llmri.state.hover; const L = window.llmri.renderer.layout;
          const f = window.llmri.state.src.get('resid', 3); return f[7 * L.h * L.w + h.y * L.w + h.x]; }"""
    )
    assert abs(value - want) <= max(1e-3, abs(want) * 1e-3)
    shot(page, "hover")
    page.mouse.move(5, 5)


def test_hover_neuron_index(page):
    open_session(page, "Hi!")
    seek(page, 2)
    x, y = tile_centre(page, 1, 3)
    page.mouse.move(x, y)
    tip = page.locator("#tooltip").inner_text()
    assert "neuron" in tip and "attn" in tip, tip
    h = page.evaluate("window.llmri.state.hover")
    w = page.evaluate("window.llmri.state.cur.meta.tile[1]")
    assert f"neuron {h['y'] * w + h['x']}" in tip


def test_token_hover_and_click(page):
    gen = page.locator("#tokens .t.g").nth(2)
    gen.hover()
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "logprob" in text and "entropy" in text and "%" in text
    assert page.locator("#tooltip .alt").count() == 5
    gen.click()
    i = int(gen.get_attribute("data-i"))
    page.wait_for_function(f"window.llmri.drawn === {i}")
    assert page.locator("#token-info .alt").count() == 5
    assert page.locator("#tokens .t.p").count() > 5  # prompt tokens styled apart


def test_diff_modes(page):
    seek(page, 6)
    plain = pixels(page)
    page.click("#diff-mode button[data-v=prev]")
    page.wait_for_function("window.llmri.drawn === 6 && window.llmri.state.diff === 'prev'")
    d = pixels(page)
    assert d["hash"] != plain["hash"]
    assert page.evaluate("window.llmri.state.cmap") == "diverging"
    shot(page, "diff_prev")
    page.click("#diff-mode button[data-v=session]")
    page.wait_for_function("document.getElementById('diff-msg').textContent.length > 0")
    msg = page.locator("#diff-msg")
    assert "frames in common" in msg.inner_text(), msg.inner_text()
    page.wait_for_function("window.llmri.state.diffSrc && window.llmri.drawn === 6")
    s = pixels(page)
    assert s["hash"] != d["hash"]
    # both prompts start with the same system prompt: identical frames, so A - B is exactly 0 there
    assert page.evaluate("Array.from(window.llmri.state.src.get('resid', 6)).join()") == page.evaluate(
        "Array.from(window.llmri.state.diffSrc.get('resid', 6)).join()"
    )
    late = page.evaluate("window.llmri.state.diffSrc.total") - 2
    seek(page, late)  # past the shared prefix the two sessions differ
    assert pixels(page)["hash"] != s["hash"]
    shot(page, "diff_session")
    neurons = page.evaluate("window.llmri.state.sessions.find(s => s.title === 'Hi!').key")
    page.select_option("#diff-session", neurons)
    page.wait_for_function("document.getElementById('diff-msg').classList.contains('error')")
    assert "cannot be compared" in msg.inner_text() and "reducer" in msg.inner_text()
    page.click("#diff-mode button[data-v=off]")
    assert page.evaluate("window.llmri.state.cmap") == "grayscale"


def test_sparklines_seek(page):
    box = page.locator("#sparklines").bounding_box()
    assert box["height"] > 60
    page.mouse.click(box["x"] + box["width"] - 10, box["y"] + box["height"] / 2)
    last = page.evaluate("window.llmri.state.src.total - 1")
    page.wait_for_function(f"window.llmri.drawn >= {last - 1}")


def test_url_remembers_session_and_token(page):
    seek(page, 9)
    key = page.evaluate("window.llmri.state.cur.summary.key")
    page.wait_for_function(f"location.hash === '#{key}/9'")
    page.reload()
    page.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
    page.wait_for_function("window.llmri.drawn === 9")
    assert page.evaluate("window.llmri.state.cur.summary.key") == key
    assert "Why is the sky blue?" in page.title()


def test_sparkline_hover(page):
    box = page.locator("#sparklines").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 6)
    tip = page.locator("#tooltip").inner_text()
    assert re.search(r"token \d+", tip) and re.search(r"L2\d ‖resid‖ [\d.]+ · sparsity", tip), tip


def test_strict_csp_page_works(browser, viewer):
    """Without bypassing the page's Content-Security-Policy, nothing is blocked and the page draws."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.goto(viewer.url)
    deadline = time.time() + 30
    while time.time() < deadline and not pg.evaluate("window.llmri && window.llmri.drawCount > 0"):
        time.sleep(0.2)
    assert pg.evaluate("window.llmri.drawCount") > 0
    # the CSP's connect-src 'self' must admit this page's own WebSocket (the live endpoints)
    msg = pg.evaluate(
        """() => new Promise((resolve) => {
          const key = window.llmri.state.cur.summary.key;
          const ws = new WebSocket(`ws://${location.host}/api/sessions/${key}/live`);
          ws.onmessage = (e) => resolve(e.data);
          ws.onerror = () => resolve('error');
        })"""
    )
    assert '"progress"' in msg, msg
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
    assert not problems, problems
    ctx.close()


def test_remote_token_leaves_the_address_bar(browser, tmp_path):
    """A remote viewer's token comes in the URL; once the page load has set its cookie (named after the port),
    the page takes the token out of the address bar, keeping other parameters and the hash; a reload still
    works on the cookie. The page's own requests pass the cross-site guards (Origin, Sec-Fetch-Site)."""
    from llmri.backends.synthetic import SyntheticModel
    from llmri.testing import ServedApp
    from llmri.viewer import create_app

    store = llmri.open_store(tmp_path / "remote.zarr", create=True)
    s = llmri.capture(SyntheticModel(), "Remote!", chat=True, max_new_tokens=6, store=store)
    token = "remote-token-0123456789"
    served = ServedApp(create_app(store, token=token, remote=True))
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)  # for wait_for_function
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        pg.goto(f"{served.url}/?view=a%20b&token={token}#s0/{s.id}/3")
        pg.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
        pg.wait_for_function("window.llmri.drawn === 3")
        assert token not in pg.url and pg.evaluate("location.search") == "?view=a%20b"
        assert pg.evaluate("location.hash") == f"#s0/{s.id}/3"
        (cookie,) = ctx.cookies()
        assert cookie["name"] == f"llmri_token_{served.port}" and cookie["value"] == token and cookie["httpOnly"]
        pg.reload()
        pg.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
        assert pg.evaluate("window.llmri.state.cur.summary.key") == f"s0/{s.id}"
        assert token not in pg.url
    finally:
        ctx.close()
        served.close()
    assert not errors, errors


# ------------------------------------------------------------------------------------------------
RECORDER = textwrap.dedent(
    """
    import sys, time, llmri
    from llmri.backends.synthetic import SyntheticModel
    src = llmri.capture(SyntheticModel(), "Live!", chat=True, max_new_tokens=30)
    store = llmri.open_store(sys.argv[1], create=True)
    meta = {k: v for k, v in src.meta.items() if k not in ("id", "status", "stop_reason")}
    meta["prompt"] = "Live recording"
    w = store.create_session(meta, src.reducer_state)
    print(w.id, flush=True)
    for i in range(len(src)):
        w.append(src.frame(i))
        if i % 6 == 5:
            w.commit()
            time.sleep(float(sys.argv[2]))
    w.close()
    """
)


def test_empty_store_then_live_session(browser, tmp_path):
    path = tmp_path / "live.zarr"
    llmri.open_store(path, create=True)
    v = Viewer(path)
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    pg = ctx.new_page()
    try:
        pg.goto(v.url)
        pg.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
        assert "No sessions yet" in pg.locator("#empty").inner_text()
        shot(pg, "empty_store")
        rec = subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(path), "1.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # the page lists the new session and follows it while frames are committed
            pg.wait_for_function("window.llmri.state.loaded && window.llmri.state.src.total > 0", timeout=30000)
            first = pg.evaluate("window.llmri.state.src.total")
            badge = pg.locator("#status-badge").inner_text().lower()
            pg.wait_for_function(f"window.llmri.state.src.total > {first}", timeout=30000)
            assert badge == "recording" or first < 30
            shot(pg, "live_recording")
            pg.wait_for_function("window.llmri.state.cur.summary.status === 'complete'", timeout=60000)
            total = pg.evaluate("window.llmri.state.src.total")
            assert total == pg.evaluate("window.llmri.state.tokens.length") and total > first
            assert pg.locator("#status-badge").inner_text().lower() == "complete"
            assert int(pg.locator("#slider").get_attribute("max")) == total - 1
            # opened on its newest frame, the playhead followed the recording to its last frame
            pg.wait_for_function(f"window.llmri.state.t === {total - 1}", timeout=10000)
        finally:
            rec.wait(60)
    finally:
        ctx.close()
        v.close()


def test_chat_only_and_interrupted_states(browser, tmp_path, real_session):
    """A chat-only session (no frames) and an interrupted one each show a clear state, not a broken page."""
    from llmri.frame import Frame, Token

    path = tmp_path / "states.zarr"
    store = llmri.open_store(path, create=True)
    meta = {"signals": [], "layers": [], "tile": [0, 0], "chat_only": True, "backend": "openai",
            "model": {"name": "llama3.2"}, "messages": [{"role": "user", "content": "Chat only please"}]}  # fmt: skip
    w = store.create_session(meta)
    for i, text in enumerate(["The", " sky", " is", " <i>blue</i>", "."]):
        w.append(Frame(Token(i, i, text, "generated", -0.2 * (i + 1), 0.5, (i, 99), (0.8, 0.1), (text, " x"))))
    w.close()
    meta = {k: v for k, v in real_session.meta.items() if k not in ("id", "status", "stop_reason")}
    meta["messages"] = [{"role": "user", "content": "Interrupted one"}]
    w = store.create_session(meta, real_session.reducer_state)
    for i in range(10):
        w.append(real_session.frame(i))
    w.update_meta(stop_reason="closed")
    w.close("interrupted")
    v = Viewer(path)
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(v.url)
        pg.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
        open_session(pg, "Chat only please")
        assert "Chat-only session" in pg.locator("#empty").inner_text()
        assert pg.locator("#tokens .t").count() == 5
        pg.locator("#tokens .t").nth(3).click()
        assert "logprob" in pg.locator("#token-info").inner_text()
        # model text is shown as text, never parsed as HTML
        assert pg.locator("#tokens i, #token-info i").count() == 0
        assert "<i>blue</i>" in pg.locator("#token-info .tok").inner_text()
        shot(pg, "chat_only")
        open_session(pg, "Interrupted one")
        assert "interrupted after 10 tokens" in pg.locator("#banner").inner_text()
        assert pg.locator("#status-badge").inner_text().lower() == "interrupted"
        assert pg.locator("#empty").is_hidden() and pixels(pg)["colours"] > 50
        shot(pg, "interrupted")
    finally:
        ctx.close()
        v.close()
    assert not errors, errors
