"""The readout panels in a real browser (headless Chromium, the page's own CSP in force) over a real
session of the bundled SmolLM2 captured with ``lens=True, attention=True``: the lens panel shows the
tokenizer's texts of the session's own top ids, clicking another head moves the token strip's
highlight, ``n`` / ``p`` move the playhead between markers, and live chat shows the newest token's
lens. Screenshots land in artifacts/ (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402
from live_helpers import wait_for  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PROMPT = "What is the capital of France?"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def recorded(real_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("readouts_browser") / "r.zarr"
    s = llmri.capture(real_model, PROMPT, chat=True, max_new_tokens=10, lens=True, attention=True, store=path)
    llmri.capture(real_model, "Hi!", chat=True, max_new_tokens=3, store=path)  # no readouts
    # a lens session as llmri wrote it before lens/top_text: the panel shows ids
    old = llmri.capture(real_model, "Hello?", chat=True, max_new_tokens=3, lens=True)
    meta = {**old.meta, "lens": {"k": 5, "signal": "resid"}}
    with llmri.open_store(path).create_session(meta) as w:
        for i in range(len(old)):
            w.append(old.frame(i))
    return path, s.id


@pytest.fixture(scope="module")
def served(recorded):
    app = ServedApp(create_app(recorded[0]))
    yield app
    app.close()


@pytest.fixture()
def page(browser, served, recorded):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(f"{served.url}/#s0/{recorded[1]}/0")
    wait_for(pg, "() => window.llmri && window.llmri.ready", what="the page")
    wait_for(pg, f"() => window.llmri.state.loaded === 's0/{recorded[1]}'", what="the session")
    yield pg
    ctx.close()
    assert not errors, errors


def seek(pg, t: int) -> None:
    pg.evaluate(f"window.llmri.seek({t})")
    wait_for(pg, f"() => document.getElementById('lens').dataset.t === '{t}'", what=f"the lens of token {t}")


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"readouts_{name}.png"))


def test_lens_panel_shows_the_tokenizers_texts(page, recorded, real_model):
    path, sid = recorded
    s = llmri.open_store(path).session(sid)
    gen = [i for i, r in enumerate(s.tokens.role) if r == "generated"]
    t = gen[0] - 1  # the position whose next token is the first answer token
    seek(page, t)
    lens = s.lens(t, t + 1)
    tok = real_model.tokenizer
    rows = page.evaluate(
        """() => [...document.querySelectorAll('#lens .lens-row')].map(r => ({
            l: Number(r.dataset.l), decided: r.classList.contains('decided'),
            ids: [...r.querySelectorAll('.lc')].map(c => Number(c.dataset.id)),
            texts: [...r.querySelectorAll('.lc .lx')].map(x => x.textContent),
            next: [...r.querySelectorAll('.lc.next')].map(c => Number(c.dataset.id)) }))"""
    )
    assert len(rows) == len(s.layers)
    nxt = int(s.tokens.ids[t + 1])
    from llmri.readouts import decision_layers

    decision = int(decision_layers(lens.top_ids[:, :, 0])[0])
    for r in rows:
        ids = lens.top_ids[0, r["l"]].tolist()
        assert r["ids"] == ids
        want = [tok.decode([i]).replace("\n", "↵").replace("\t", "→") or "▫" for i in ids]
        assert r["texts"] == want, r["l"]
        assert r["next"] == ([nxt] if nxt in ids else [])
        assert r["decided"] == (r["l"] == decision)
    last = rows[0]  # the last layer is the top row; greedy: its top-1 is the next token
    assert last["l"] == len(s.layers) - 1 and last["ids"][0] == nxt and last["next"] == [nxt]
    np.testing.assert_array_equal(lens.top_ids[0, -1, 0], nxt)
    assert page.locator("#lens-strip").is_visible()
    shot(page, "lens")


def test_clicking_another_head_moves_the_highlight(page, recorded):
    path, sid = recorded
    s = llmri.open_store(path).session(sid)
    t = len(s) - 2
    seek(page, t)
    wait_for(page, f"() => document.getElementById('attn-grid').dataset.t === '{t}'", what="the attention grid")
    att = s.attention(t, t + 1)

    def highlighted() -> dict[int, float]:
        pairs = page.evaluate(
            """() => [...document.querySelectorAll('#tokens .t.att')]
                  .map(x => [Number(x.dataset.i), Number(x.dataset.aw)])"""
        )
        return {int(i): float(w) for i, w in pairs}

    def want(layer, head):
        pos, w = att.top_pos[0, layer, head], att.top_weight[0, layer, head]
        return {int(p): float(x) for p, x in zip(pos, w, strict=True) if p >= 0}

    # two heads that attend differently
    heads = [(layer, h) for layer in range(len(s.layers)) for h in range(att.top_pos.shape[2])]
    a = heads[0]
    b = next(x for x in heads[1:] if int(att.top_pos[0, x[0], x[1], 0]) != int(att.top_pos[0, a[0], a[1], 0]))
    for layer, head in (a, b):
        page.click(f'#attn-grid .ag-c[data-l="{layer}"][data-h="{head}"]')
        got = highlighted()
        w = want(layer, head)
        assert sorted(got) == sorted(w), (layer, head)
        for p, x in w.items():
            assert abs(got[p] - x) < 1e-4
        if (layer, head) == a:
            first = got
    assert sorted(first) != sorted(got) or first != got
    # the hover tooltip names the weight
    top = max(got, key=got.get)
    page.hover(f'#tokens .t[data-i="{top}"]')
    assert f"L{b[0]} H{b[1]}" in page.locator("#tooltip").inner_text()
    shot(page, "attention")
    # all heads of a layer: their mean
    page.click(f'#attn-grid .ag-l[data-l="{b[0]}"]')
    got = highlighted()
    n_heads = att.top_pos.shape[2]
    mean: dict[int, float] = {}
    for h in range(n_heads):
        for p, x in want(b[0], h).items():
            mean[p] = mean.get(p, 0.0) + x / n_heads
    assert sorted(got) == sorted(mean)
    assert all(abs(got[p] - mean[p]) < 1e-4 for p in mean)


def test_n_and_p_jump_between_markers(page, recorded):
    from llmri.readouts import markers

    path, sid = recorded
    s = llmri.open_store(path).session(sid)
    marked = sorted({m.token for m in markers(s)})
    assert marked, "the session has no markers to jump to"
    wait_for(page, f"() => window.llmri.markers.list.length === {len(markers(s))}", what="the markers")
    assert page.locator("#marker-ticks .mk").count() == len(marked)
    seek(page, 0)
    page.locator("body").press("n")
    first = marked[0] if marked[0] > 0 else (marked[1] if len(marked) > 1 else 0)
    wait_for(page, f"() => window.llmri.state.t === {first}", what="the playhead at the first marker")
    if len(marked) > 2:
        page.locator("body").press("n")
        wait_for(page, f"() => window.llmri.state.t === {marked[marked.index(first) + 1]}", what="the next marker")
        page.locator("body").press("p")
        wait_for(page, f"() => window.llmri.state.t === {first}", what="back to the previous marker")
    # the tick's reason on hover
    tick = page.locator(f'#marker-ticks .mk[data-t="{first}"]')
    tick.hover()
    reasons = [m.reason for m in markers(s) if m.token == first]
    assert reasons[0] in page.locator("#tooltip").inner_text()
    shot(page, "markers")
    # a kind turned off: its ticks go, and n / p skip it
    all_ms = markers(s)
    kinds = {m.kind for m in all_ms}
    if "attention_jump" in kinds and len(kinds) > 1:
        page.click('#marker-kinds .mkind[data-kind="attention_jump"]')
        rest = sorted({m.token for m in all_ms if m.kind != "attention_jump"})
        assert page.locator("#marker-ticks .mk").count() == len(rest)
        seek(page, 0)
        for want in rest[:3]:
            page.locator("body").press("n")
            wait_for(page, f"() => window.llmri.state.t === {want}", what=f"the marker at {want}")
            reasons = [m.reason for m in all_ms if m.token == want and m.kind != "attention_jump"]
            assert reasons[0] in page.locator("#marker-here").inner_text()
        page.locator("#marker-panel").scroll_into_view_if_needed()
        shot(page, "markers_filtered")
        page.click('#marker-kinds .mkind[data-kind="attention_jump"]')
        assert page.locator("#marker-ticks .mk").count() == len(marked)
    # c is now the diff toggle
    page.locator("body").press("c")
    wait_for(page, "() => window.llmri.state.diff === 'prev'", what="the diff")


def test_a_session_without_readouts_hides_the_panels(page):
    key = page.evaluate("window.llmri.state.sessions.find(s => s.title === 'Hi!').key")
    page.select_option("#session-select", key)
    wait_for(page, f"() => window.llmri.state.loaded === {key!r}")
    assert page.locator("#lens-panel").is_hidden() and page.locator("#attn-panel").is_hidden()
    assert page.locator("#lens-strip").is_hidden()


def test_an_older_session_without_texts_shows_ids(page, recorded):
    key = page.evaluate("window.llmri.state.sessions.find(s => s.title === 'Hello?').key")
    page.select_option("#session-select", key)
    wait_for(page, f"() => window.llmri.state.loaded === {key!r}")
    seek(page, 2)
    s = llmri.open_store(recorded[0]).session(key.split("/")[1])
    texts = page.evaluate(
        "[...document.querySelectorAll('#lens .lens-row')].map(r => r.querySelector('.lx').textContent)"
    )
    assert texts == [f"#{i}" for i in s.lens(2, 3).top_ids[0, ::-1, 0].tolist()]
    assert page.locator("#attn-panel").is_hidden() and page.locator("#lens-panel").is_visible()


def test_live_chat_shows_the_newest_tokens_lens(browser, real_model, tmp_path):
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(real_model, lens=True, attention=True))
    app = ServedApp(create_app(store, live=live))
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        pg.goto(app.url)
        wait_for(pg, "() => !!(window.llmri && window.llmri.ready && window.llmri.live && window.llmri.live.hello)")
        assert pg.evaluate("window.llmri.live.hello.readouts") == ["lens", "attention"]
        pg.click("#chat-gear")
        pg.fill("#cs-max", "6")
        pg.click("#chat-gear")
        pg.fill("#chat-input", PROMPT)
        pg.press("#chat-input", "Enter")
        # while it streams: the lens panel follows the newest token, from the live message
        wait_for(
            pg,
            """() => { const C = window.llmri.live, S = window.llmri.state;
                 return C.run && C.run.answer.size >= 2 && document.getElementById('lens').dataset.t === String(S.t)
                   && document.querySelectorAll('#lens .lens-row').length > 0; }""",
            timeout=240,
            what="the lens of a streamed token",
        )
        shot(pg, "live")
        t, ids = pg.evaluate(  # at one moment: the newest token moves on while the answer streams
            """() => [Number(document.getElementById('lens').dataset.t),
                      [...document.querySelectorAll('#lens .lens-row')]
                        .map(r => Number(r.querySelector('.lc').dataset.id))]"""
        )
        assert pg.locator("#attn-grid .ag-c").count() > 0
        wait_for(pg, "() => !window.llmri.live.run", timeout=240, what="the end of the turn")
        key = pg.evaluate("window.llmri.state.cur.summary.key")
        s = store.session(key.split("/")[1])
        want = s.lens(t, t + 1).top_ids[0, ::-1, 0].tolist()  # the panel lists the last layer first
        assert ids == want
    finally:
        ctx.close()
        live.close()
        app.close()
    assert not errors, errors
