"""Live chat's steering panel in a real browser (headless Chromium, the page's CSP in force) on the
bundled model: an answer, then "re-run steered" with a neuron, streamed beside it as a new session
that names it as its baseline and opens compared with it. Screenshots land in artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402
from live_helpers import wait_for  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def served(real_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("steer_browser") / "live.zarr"
    store = llmri.open_store(path, create=True)
    live = LiveChat(ModelEngine(real_model))
    app = ServedApp(create_app(store, live=live))
    yield app, store
    live.close()
    app.close()


def test_re_run_steered_streams_beside_the_answer(browser, served):
    app, store = served
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        pg.goto(app.url)
        wait_for(pg, "() => !!(window.llmri && window.llmri.live && window.llmri.live.hello)", what="live chat")
        assert pg.locator("#chat-steer-btn").is_visible()
        pg.click("#chat-gear")
        pg.fill("#cs-max", "6")
        pg.fill("#chat-input", "Name a city in Europe.")
        pg.click("#chat-send")
        wait_for(pg, "() => document.querySelector('.chat-msg.assistant .rerun') !== null", 300, "the first answer")
        original = pg.evaluate("() => window.llmri.live.shownKey")
        # "re-run steered" with nothing chosen opens the panel and says what is missing
        pg.click(".chat-msg.assistant .rerun")
        assert pg.locator("#chat-steer").is_visible() and "steering panel" in pg.locator("#chat-error").inner_text()
        pg.select_option("#st-kind", "neuron")
        pg.fill("#st-neuron", "7")
        pg.fill("#st-layers", "4, 10-12")
        pg.click(".chat-msg.assistant .rerun")
        paired = "() => document.querySelectorAll('.chat-pair .chat-msg').length === 2"
        wait_for(pg, paired, 60, "the answers side by side")
        steered = f"() => window.llmri.live.shownKey !== '{original}' && !window.llmri.live.run"
        wait_for(pg, steered, 300, "the steered answer")
        key = pg.evaluate("() => window.llmri.live.shownKey")
        r = store.session(key.split("/")[1])
        assert r.meta["baseline"] == original.split("/")[1]
        (rec,) = r.meta["interventions"]
        assert rec["kind"] == "steer" and rec["layers"] == [4, 10, 11, 12] and rec["scale"] == 8.0
        base = store.session(original.split("/")[1])
        assert r.meta["messages"] == base.meta["messages"] and r.meta["generation"] == base.meta["generation"]
        # the viewer shows the steered answer compared with the original
        compared = f"() => window.llmri.state.loaded === '{key}' && window.llmri.pair.rows > 0"
        try:
            wait_for(pg, compared, 60, "the comparison")
        except AssertionError:
            raise AssertionError(pg.evaluate("() => [window.llmri.state.loaded, window.llmri.live.shownKey, "
                                             "document.getElementById('pair-msg').textContent]")) from None  # fmt: skip
        assert pg.evaluate("() => window.llmri.pair.base") == original
        assert pg.locator("#diff-strip").get_attribute("data-rows") == str(len(r.layers))
        # the conversation goes on from the original: the re-run is not a turn of its own
        assert pg.evaluate("() => window.llmri.live.conv.map(m => m.role)") == ["user", "assistant"]
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "live_steered_rerun.png"))
        assert not errors, errors
    finally:
        ctx.close()


def test_steer_with_a_feature_from_the_features_panel(browser, real_model, tmp_path):
    """Live chat records an SAE; a pinned feature's "steer" sets the steering panel to that feature at the
    SAE's layer, and "re-run steered" records a steer along the feature's decoder row."""
    from features_helpers import tiny_sae
    from llmri.interventions import from_meta

    sae = tiny_sae(d_in=576, d_sae=32, layer=4)
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(real_model, saes=[sae], sae_k=4))
    app = ServedApp(create_app(store, live=live))
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        pg.goto(app.url)
        wait_for(pg, "() => !!(window.llmri && window.llmri.live && window.llmri.live.hello)", what="live chat")
        assert pg.evaluate("() => window.llmri.live.hello.saes") == ["toy"]
        pg.click("#chat-gear")
        pg.fill("#cs-max", "6")
        pg.fill("#chat-input", "Name a city in Europe.")
        pg.click("#chat-send")
        wait_for(pg, "() => document.querySelector('.chat-msg.assistant .rerun') !== null", 300, "the answer")
        original = pg.evaluate("() => window.llmri.live.shownKey")
        wait_for(pg, "() => document.querySelector('#feat-list .feat-row') !== null", 60, "the features panel")
        pg.click("#feat-list .feat-row")
        wait_for(pg, "() => document.querySelector('#feat-pins button.feat-steer') !== null", 30, "the steer button")
        f = int(pg.get_attribute("#feat-pins button.feat-steer", "data-f"))
        pg.click("#feat-pins button.feat-steer")
        assert pg.locator("#chat-steer").is_visible()
        assert pg.eval_on_selector("#st-kind", "e => e.value") == "feature"
        assert pg.eval_on_selector("#st-sae", "e => e.value") == "toy"
        assert pg.eval_on_selector("#st-feature", "e => Number(e.value)") == f
        assert pg.eval_on_selector("#st-layers", "e => e.value") == "4"
        pg.click(".chat-msg.assistant .rerun")
        steered = f"() => window.llmri.live.shownKey !== '{original}' && !window.llmri.live.run"
        wait_for(pg, steered, 300, "the steered answer")
        r = store.session(pg.evaluate("() => window.llmri.live.shownKey").split("/")[1])
        assert r.meta["baseline"] == original.split("/")[1]
        (rec,) = from_meta(r.meta)
        assert rec.kind == "steer" and rec.layers == (4,) and rec.scale == 8.0
        want = sae.direction(f, layers=[4]).array().reshape(-1)
        np.testing.assert_allclose(rec.direction.array().reshape(-1), want, rtol=1e-6, atol=1e-7)
        assert not errors, errors
    finally:
        ctx.close()
        app.close()
        live.close()
