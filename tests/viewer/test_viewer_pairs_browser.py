"""Paired runs in a real browser (headless Chromium, the page's own CSP in force): a session that names
its baseline opens compared with it (the divergence tick on the right token, a difference strip of one
row per layer, "− baseline frames" subtracting that very session), and a patching sweep's heatmap
whose cell, clicked, is run on the live chat's model and opened. Screenshots land in artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402
from live_helpers import wait_for  # noqa: E402
from llmri.interventions import from_meta  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"pairs_{name}.png"))


def open_page(browser, url: str, key: str):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.goto(f"{url}/#{key}/0")
    wait_for(pg, "() => window.llmri && window.llmri.ready", what="the page")
    wait_for(pg, f"() => window.llmri.state.loaded === '{key}'", what="the session")
    return ctx, pg, errors


# -- a run against its baseline (synthetic backend: fast) -------------------------------------------
@pytest.fixture(scope="module")
def paired(synthetic_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs_browser") / "p.zarr"
    base = llmri.capture(synthetic_model, "Why is the sky blue?", chat=False, max_new_tokens=8, store=path)
    run = llmri.capture(synthetic_model, "Why is the sky gray?", chat=False, max_new_tokens=8, store=path,
                        meta={"baseline": base.id})  # fmt: skip
    app = ServedApp(create_app(path))
    yield app, base, run
    app.close()


def test_an_intervened_session_opens_compared_with_its_baseline(browser, paired):
    app, base, run = paired
    ctx, pg, errors = open_page(browser, app.url, f"s0/{run.id}")
    try:
        want = llmri.compare(run, base).first_divergence
        assert want == len("Why is the sky ")
        wait_for(pg, "() => window.llmri.pair.rows > 0", what="the difference strip")
        pair = pg.evaluate("() => { const p = window.llmri.pair; return {first: p.first, base: p.base, rows: p.rows} }")
        assert pair == {"first": want, "base": f"s0/{base.id}", "rows": len(run.layers)}
        strip = pg.locator("#diff-strip")
        assert strip.is_visible() and strip.get_attribute("data-rows") == str(len(run.layers))
        assert strip.get_attribute("data-cols") == str(min(len(run), len(base)))
        tick = pg.locator("#diverge-tick")
        assert tick.is_visible() and tick.get_attribute("data-t") == str(want)
        marked = pg.evaluate("() => [...document.querySelectorAll('#tokens .t.diverge')].map(s => Number(s.dataset.i))")
        assert marked == [want]
        assert f"diverge at token {want}" in pg.locator("#pair-msg").inner_text()
        # the strip is coloured where llmri.compare says the signal moved: from the divergence point on (the
        # synthetic model's activations are a function of the token and position, so equal again after "gray")
        pg.evaluate(f"window.llmri.seek({want})")  # the playhead (drawn on the strip) where it is coloured anyway
        lit = pg.evaluate(
            """() => { const c = document.getElementById('diff-strip'), x = c.getContext('2d');
                 const r = c.getBoundingClientRect(), d = window.devicePixelRatio || 1, n = Number(c.dataset.cols);
                 const left = 34, W = r.width - 38;
                 return [...Array(n).keys()].map(t => { let s = 0, px = Math.round((left + (t + 0.5) / n * W) * d);
                   for (let y = 0; y < c.height - 12 * d; y++) s += x.getImageData(px, y, 1, 1).data[3];
                   return s > 0; }); }"""
        )
        moved = (llmri.compare(run, base).rel_l2[pg.locator("#diff-strip").get_attribute("data-signal")] > 0).any(1)
        assert lit == moved.tolist() and not any(lit[:want]) and lit[want], lit
        tick.click()  # the tick moves the playhead to the divergence point
        wait_for(pg, f"() => window.llmri.state.t === {want}", what="the playhead on the divergence point")
        pg.click("#pair-sub")  # − baseline frames: the frame diff subtracts the baseline itself
        wait_for(pg, "() => window.llmri.state.diffSummary !== null", what="the frame diff")
        assert pg.evaluate("() => window.llmri.state.diffSummary.key") == f"s0/{base.id}"
        shot(pg, "divergence")
        pg.evaluate(f"window.llmri.openSession('s0/{base.id}')")  # the baseline itself names none
        wait_for(pg, f"() => window.llmri.state.loaded === 's0/{base.id}'", what="the baseline")
        assert pg.locator("#diff-strip").is_hidden() and pg.locator("#pair-ticks").is_hidden()
        assert pg.evaluate("() => window.llmri.pair.data") is None
        assert not errors, errors
    finally:
        ctx.close()


# -- a patching sweep's heatmap (the bundled model: one forward per cell run) ----------------------
@pytest.fixture(scope="module")
def swept(real_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs_sweep") / "s.zarr"
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    result = llmri.patching(real_model, clean, corrupt, signals=("resid", "mlp"), layers=[0, 6, 12], store=path)
    corrupt_id = next(r.id for r in llmri.open_store(path).sessions() if r.meta.get("patching"))
    app = ServedApp(create_app(path, live=LiveChat(ModelEngine(real_model))))
    yield app, path, corrupt_id, result
    app.close()


@pytest.mark.slow
def test_a_heatmap_cell_opens_its_patched_run(browser, swept):
    app, path, corrupt_id, result = swept
    ctx, pg, errors = open_page(browser, app.url, f"s0/{corrupt_id}")
    try:
        pg.click("#patching-btn")
        wait_for(pg, "() => document.querySelectorAll('#patching-body .hm-cell').length > 0", what="the heatmap")
        n_cells = pg.evaluate("() => document.querySelectorAll('#patching-body .hm-cell').length")
        assert n_cells == result.values.size
        grids = pg.evaluate("() => [...document.querySelectorAll('.hm-grid')].map(g => g.dataset.signal)")
        assert grids == ["resid", "mlp"]
        shot(pg, "heatmap")
        pos = len(result.tokens) - 2  # " Italy": patched from " France" at layer 6
        pg.click(f'.hm-cell[data-s="resid"][data-l="6"][data-p="{pos}"]')
        opened = f"() => window.llmri.state.loaded && window.llmri.state.loaded !== 's0/{corrupt_id}'"
        wait_for(pg, opened, what="the patched run")
        key = pg.evaluate("() => window.llmri.state.loaded")
        run = llmri.open_store(path).session(key.split("/")[1])
        cell = {"sweep": corrupt_id, "signal": "resid", "layer": 6, "position": pos}
        assert run.meta["patched_cell"] == cell and run.meta["baseline"] == corrupt_id
        assert [i.to_dict()["kind"] for i in from_meta(run.meta)] == ["patch"]
        # it opens compared with the corrupt run: equal below layer 6 and before the patched position
        wait_for(pg, "() => window.llmri.pair.rows > 0", what="the difference strip")
        assert pg.evaluate("() => window.llmri.pair.rows") == len(run.layers)
        diff = llmri.compare(run, llmri.open_store(path).session(corrupt_id)).rel_l2["resid"]
        assert (diff[:, :6] == 0).all() and (diff[:pos] == 0).all() and (diff[pos, 6:] > 0).all()
        shot(pg, "patched_run")
        # the second click on that cell opens the stored run, without running it again
        pg.evaluate(f"window.llmri.openSession('s0/{corrupt_id}')")
        wait_for(pg, f"() => window.llmri.state.loaded === 's0/{corrupt_id}'", what="the sweep again")
        pg.click("#patching-btn")
        wait_for(pg, "() => document.querySelectorAll('#patching-body .hm-cell.ran').length === 1", what="the run cell")
        n_before = len(llmri.open_store(path).session_ids())
        pg.click(f'.hm-cell[data-s="resid"][data-l="6"][data-p="{pos}"]')
        wait_for(pg, f"() => window.llmri.state.loaded === '{key}'", what="the stored run")
        assert len(llmri.open_store(path).session_ids()) == n_before
        assert not errors, errors
    finally:
        ctx.close()
