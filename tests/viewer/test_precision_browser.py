"""The viewer and a session of each frame dtype, in headless Chromium: a float16 cell that overflowed is
drawn in the overflow colour and says "overflow" on hover, a badge counts them, and bfloat16 / float32
frames arrive in the browser as the values the store holds (past float16's range)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

import llmri  # noqa: E402
from helpers import tiny_model  # noqa: E402
from live_helpers import wait_for  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)

DTYPES = ("float16", "bfloat16", "float32")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny Llama whose residual reaches ~1e6, captured once per frame dtype (neurons) into one store."""
    model = tiny_model()
    with torch.no_grad():
        model.model.model.embed_tokens.weight.mul_(5e7)
    path = tmp_path_factory.mktemp("precision_browser") / "p.zarr"
    sessions = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", llmri.FrameOverflowWarning)  # float16's: what this module shows
        for d in DTYPES:
            kw = {"reducer": "neurons", "frame_dtype": d, "store": path}
            sessions[d] = llmri.capture(model, "Why?", chat=False, max_new_tokens=2, ignore_eos=True, **kw)
    assert sessions["float16"].meta["overflow"]["total"] > 0
    return path, sessions


@pytest.fixture(scope="module")
def served(recorded):
    app = ServedApp(create_app(recorded[0]))
    yield app
    app.close()


def _open(browser, served, sid: str):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(f"{served.url}/#s0/{sid}/1")
    wait_for(pg, "() => window.llmri && window.llmri.ready", what="the page")
    wait_for(pg, f"() => window.llmri.state.loaded === 's0/{sid}' && window.llmri.drawn === 1", what="frame 1")
    return ctx, pg, errors


def _cell(pg, grid: int, layer: int, y: int, x: int) -> tuple[float, float]:
    """Page coordinates of the centre of one value's cell."""
    box = pg.locator("#view").bounding_box()
    cx, cy = pg.evaluate(
        f"""() => {{ const L = window.llmri.renderer.layout; const g = L.grids[{grid}];
          const [dx, dy] = window.llmri.renderer.tileXY(g, {layer});
          return [dx + ({x} + 0.5) * L.k, dy + ({y} + 0.5) * L.k]; }}"""
    )
    return box["x"] + cx, box["y"] + cy


def _rgb(pg, cx: float, cy: float) -> list[int]:
    box = pg.locator("#view").bounding_box()
    return pg.evaluate(
        f"""() => Array.from(document.getElementById('view').getContext('2d')
          .getImageData({int(cx - box["x"])}, {int(cy - box["y"])}, 1, 1).data.slice(0, 3))"""
    )


def test_overflowed_cell_shows_as_overflow(browser, served, recorded):
    _, sessions = recorded
    s = sessions["float16"]
    resid = s.frames("resid")[1]
    layer, y, x = (int(v) for v in np.argwhere(np.isinf(resid))[0])
    ctx, pg, errors = _open(browser, served, s.id)
    try:
        badge = pg.locator("#overflow-badge")
        assert badge.is_visible() and badge.inner_text().strip().lower() == f"{s.meta['overflow']['total']} overflow"
        cx, cy = _cell(pg, 0, layer, y, x)
        assert _rgb(pg, cx, cy) == [255, 0, 255]  # the overflow colour, not the brightest of the map
        fy, fx = np.argwhere(np.isfinite(resid[layer]))[0]
        assert _rgb(pg, *_cell(pg, 0, layer, int(fy), int(fx))) != [255, 0, 255]
        pg.mouse.move(cx, cy)
        assert "overflow" in pg.locator("#tooltip").inner_text()
        assert "overflow" in pg.locator("#readout .big").inner_text()
        # the colour scales stay finite: no NaN or infinite scale from the overflowed values
        assert pg.evaluate("Array.from(window.llmri.state.scales.resid).every(Number.isFinite)")
    finally:
        ctx.close()
    assert not errors, errors


@pytest.mark.parametrize("frame_dtype", ["bfloat16", "float32"])
def test_wide_dtypes_arrive_as_stored(browser, served, recorded, frame_dtype):
    _, sessions = recorded
    s = sessions[frame_dtype]
    ctx, pg, errors = _open(browser, served, s.id)
    try:
        assert not pg.locator("#overflow-badge").is_visible()
        got = np.array(pg.evaluate("Array.from(window.llmri.state.src.get('resid', 1))"), dtype=np.float32)
        want = s.frames("resid")[1].reshape(-1)
        assert np.abs(want).max() > 65504 and np.array_equal(got, want)
    finally:
        ctx.close()
    assert not errors, errors
