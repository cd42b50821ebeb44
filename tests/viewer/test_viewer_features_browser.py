"""The SAE features in a real browser (headless Chromium, the page's own CSP in force), over sessions of the
synthetic model recorded with a tiny SAE (tests/features_helpers.py): the panel shows the stored top features
of the scrubbed token, the strip has one value per token equal to the stored activation, search finds a
feature by its label, a marker appears where a feature spikes, and live chat shows the newest token's features.
Screenshots land in artifacts/ (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402
from features_helpers import LABELS, K, feature_store, tiny_sae  # noqa: E402
from live_helpers import SlowModel, wait_for  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """``(store path, spiked session id, spiked feature, its token)``; the page opens the spiked session."""
    path = tmp_path_factory.mktemp("features_browser") / "f.zarr"
    _, _, spiked, feature, at = feature_store(path)
    return path, spiked, feature, at


@pytest.fixture(scope="module")
def served(recorded):
    app = ServedApp(create_app(recorded[0]))
    yield app
    app.close()


def open_page(browser, url: str, key: str | None):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(url)
    wait_for(pg, "() => window.llmri && window.llmri.ready", what="the page")
    if key:
        wait_for(pg, f"() => window.llmri.state.loaded === {key!r}", what="the session")
        wait_for(pg, "() => window.llmri.features.sae === 'toy'", what="the features panel")
    return ctx, pg, errors


@pytest.fixture()
def page(browser, served, recorded):
    sid = recorded[1]
    ctx, pg, errors = open_page(browser, f"{served.url}/#s0/{sid}/0", f"s0/{sid}")
    yield pg
    ctx.close()
    assert not errors, errors


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"features_{name}.png"))


def seek(pg, t: int) -> None:
    pg.evaluate(f"window.llmri.seek({t})")
    wait_for(pg, f"() => document.getElementById('feat-list').dataset.t === '{t}'", what=f"the features of token {t}")


def shown(pg) -> list[dict]:
    return pg.evaluate(
        """() => [...document.querySelectorAll('#feat-list .feat-row')].map(r => ({
            f: Number(r.dataset.f), label: r.querySelector('.fl').textContent,
            v: r.querySelector('.fv').textContent }))"""
    )


def test_panel_shows_the_stored_top_features_of_the_scrubbed_token(page, recorded):
    path, sid, *_ = recorded
    f = llmri.open_store(str(path)).session(sid).sae("toy")
    for t in (3, len(f) - 2):
        seek(page, t)
        rows = shown(page)
        ids = [int(i) for i in f.ids[t] if i >= 0]
        assert [r["f"] for r in rows] == ids
        for r, i, v in zip(rows, ids, f.values[t], strict=False):
            assert r["label"] == (LABELS.get(i) or "no label")
            assert abs(float(r["v"]) - float(v)) < 0.006
        sub = page.locator("#feat-sub").inner_text()
        assert f"L0 {int(f.l0[t])}" in sub and f"FVU {f.fvu[t]:.3f}" in sub
    shot(page, "panel")


def test_strip_has_the_stored_activation_of_each_token(page, recorded):
    path, sid, feature, _ = recorded
    f = llmri.open_store(str(path)).session(sid).sae("toy")
    seek(page, 5)
    assert page.evaluate("window.llmri.features.pinned") == [] and page.locator("#feat-strip").is_hidden()
    first = next(int(i) for i in f.ids[5] if 0 <= i != feature)
    page.click(f'#feat-list .feat-row[data-f="{first}"]')
    page.fill("#feat-search", str(feature))
    wait_for(page, f"() => document.querySelector('#feat-matches .feat-row[data-f=\"{feature}\"]')", what="the match")
    page.click(f'#feat-matches .feat-row[data-f="{feature}"]')
    wait_for(page, "() => window.llmri.features.strip.features.length === 2", what="two rows on the strip")
    strip = page.evaluate("(() => { const s = window.llmri.features.strip; return [s.features, s.n, [...s.data]]; })()")
    feats, n, data = strip
    assert feats == [first, feature] and n == len(f)
    got = np.array(data, dtype=np.float32).reshape(2, n)
    for r, i in enumerate(feats):
        np.testing.assert_array_equal(got[r], f.activation(i))
    assert page.locator("#feat-strip").is_visible()
    # a click on the match went to the token of its largest activation; the strip's row scrolls with it
    assert page.evaluate("window.llmri.state.t") == int(np.argmax(f.activation(feature)))
    shot(page, "strip")
    page.click(f'#feat-pins .feat-pin[data-f="{feature}"]')
    wait_for(page, "() => window.llmri.features.strip.features.length === 1", what="one row left")


def test_search_finds_a_feature_by_its_label(page, recorded):
    path, sid, *_ = recorded
    f = llmri.open_store(str(path)).session(sid).sae("toy")
    present = {int(i) for i in f.ids[f.ids >= 0]}
    label_id = next(i for i in LABELS if i in present)
    word = LABELS[label_id].split()[-1].upper()  # case-insensitive
    page.fill("#feat-search", word)
    wait_for(page, f"() => document.getElementById('feat-matches').dataset.q === {word!r}", what="the matches")
    found = page.evaluate("window.llmri.features.matches.map(m => m.feature)")
    assert found == [i for i in LABELS if i in present and word.lower() in LABELS[i].lower()]
    page.fill("#feat-search", "no such label anywhere")
    wait_for(page, "() => document.getElementById('feat-matches').textContent.includes('no feature')")


def test_a_marker_where_a_feature_spikes(page, recorded):
    path, sid, feature, at = recorded
    s = llmri.open_store(str(path)).session(sid)
    spikes = [m for m in s.markers() if m.kind == "feature_spike"]
    assert [m.token for m in spikes] == [at] and f"feature {feature}" in spikes[0].reason
    wait_for(page, f"() => window.llmri.markers.list.some(m => m.kind === 'feature_spike' && m.token === {at})")
    tick = page.locator(f'#marker-ticks .mk[data-t="{at}"]')  # coloured by the token's first marker kind
    assert tick.count() == 1
    tick.click()
    wait_for(page, f"() => window.llmri.state.t === {at}", what="the playhead at the spike")
    assert spikes[0].reason in page.locator("#marker-here").inner_text()
    wait_for(page, f"() => document.getElementById('feat-list').dataset.t === '{at}'")
    assert shown(page)[0]["f"] == feature
    shot(page, "spike")


def test_live_chat_shows_the_newest_tokens_features(browser, tmp_path):
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(SlowModel(), saes=[tiny_sae()], sae_k=K))  # a pause per forward: time to look
    app = ServedApp(create_app(store, live=live))
    ctx, pg, errors = open_page(browser, app.url, None)
    try:
        wait_for(pg, "() => !!(window.llmri.live && window.llmri.live.hello)")
        pg.fill("#chat-input", "Why is the sky blue?")
        pg.press("#chat-input", "Enter")
        # while it streams: the panel follows the newest token, from the rows the readouts messages carry
        t, ids = wait_for(
            pg,
            """() => { const C = window.llmri.live, S = window.llmri.state, el = document.getElementById('feat-list');
                 if (!(C.run && C.run.answer.size >= 3 && el.dataset.t === String(S.t) && S.t === S.src.total - 1))
                   return null;
                 return [S.t, [...el.querySelectorAll('.feat-row')].map(r => Number(r.dataset.f))]; }""",
            timeout=120,
            what="the features of a streamed token",
        )
        assert pg.evaluate("window.llmri.features.liveRows") > t
        shot(pg, "live")
        wait_for(pg, "() => window.llmri.live.run === null", timeout=120, what="the end of the answer")
        s = store.session(pg.evaluate("window.llmri.state.loaded").split("/")[1])
        assert ids == [int(i) for i in s.sae("toy").ids[t] if i >= 0]
        # the viewer holds this SAE's weights: a pinned feature's direction downloads as a .npy
        pg.click("#feat-list .feat-row")
        href = wait_for(pg, "() => { const a = document.querySelector('#feat-pins a.feat-dir'); return a && a.href; }")
        assert pg.evaluate(f"fetch({href!r}).then(r => r.ok && r.arrayBuffer()).then(b => b && b.byteLength)") == 384
    finally:
        ctx.close()
        app.close()
        live.close()
    assert not errors, errors
