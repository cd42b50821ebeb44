"""The probe strip: ``/probestrip`` is the session's own projections and cosines, and in a real browser
(headless Chromium, the page's CSP in force) over a real session of the bundled SmolLM2 captured with two
probes, one row per probe under the norm strip, each token coloured by its projection at the chosen layer
(checked pixel by pixel against the colour map), another layer picked, a click seeking; hidden for a
session without probes. A screenshot lands in artifacts/ (gitignored)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from starlette.testclient import TestClient  # noqa: E402

import llmri  # noqa: E402
from live_helpers import wait_for  # noqa: E402
from llmri.testing import CHROMIUM, ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.encoding import decode_array  # noqa: E402

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def recorded(real_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("probes_viewer") / "p.zarr"
    rng = np.random.default_rng(0)
    rnd = llmri.Direction(rng.standard_normal((2, 576)).astype(np.float32), (3, 12), real_model.fingerprint).named(
        "rnd"
    )
    up = llmri.Direction(rng.standard_normal((1, 576)).astype(np.float32), (20,)).named("up")
    s = llmri.capture(real_model, "The capital of France is", max_new_tokens=8, probes=[rnd, up], store=path)
    plain = llmri.capture(real_model, "Hi!", max_new_tokens=2, store=path)
    return path, s.id, plain.id


def test_the_strip_route_is_the_sessions_probes(recorded):
    path, sid, plain = recorded
    client = TestClient(create_app(path, port=8000), base_url="http://127.0.0.1:8000")
    s = llmri.open_store(path).session(sid)
    r = client.get(f"/api/sessions/s0/{sid}/probestrip")
    head, arr = decode_array(r.content)
    assert head["kind"] == "probestrip" and head["names"] == ["rnd", "up"]
    assert arr.shape == (2, 2, len(s), len(s.layers))
    for p, name in enumerate(s.probes):
        np.testing.assert_array_equal(arr[0, p], s.probe(name).projection)
        np.testing.assert_array_equal(arr[1, p], s.probe(name).cosine)
    bad = client.get(f"/api/sessions/s0/{plain}/probestrip")
    assert bad.status_code == 400 and "has no probes" in bad.json()["error"]


@pytest.fixture()
def page(browser, recorded):
    app = ServedApp(create_app(recorded[0]))
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(f"{app.url}/#s0/{recorded[1]}/0")
    wait_for(pg, "() => window.llmri && window.llmri.ready", what="the page")
    wait_for(pg, f"() => window.llmri.state.loaded === 's0/{recorded[1]}'", what="the session")
    yield pg
    ctx.close()
    app.close()
    assert not errors, errors


def _expected_rgb(lut: list[int], row: np.ndarray, t: int) -> list[int]:
    """The colour the strip gives token ``t`` of one probe's row at a layer: diverging, the 95th percentile
    of |projection| past position 0 at full colour (Math.round of (v / most + 1) * 127.5, clipped)."""
    abs_ = np.sort(np.abs(row[1:].astype(np.float64)))
    most = float(abs_[math.floor(0.95 * (len(abs_) - 1))])
    i = min(255, max(0, math.floor((float(row[t]) / most + 1) * 127.5 + 0.5)))
    return lut[3 * i : 3 * i + 3]


def _pixel(pg, t: int, p: int) -> list[int]:
    """The strip's pixel (RGBA) at the middle of token ``t`` in probe row ``p`` (device pixels: dpr 1 here)."""
    return pg.evaluate(
        """([t, p]) => {
        const c = document.getElementById("probe-strip");
        const n = window.llmri.state.src.total, left = 34, W = document.getElementById("sparklines").clientWidth - 38;
        const x = Math.floor(left + ((t + 0.5) / n) * W), y = p * 12 + 6;
        return Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data);
    }""",
        [t, p],
    )


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)")
def test_the_probe_strip_draws_each_probes_projection_at_the_chosen_layer(page, recorded):
    path, sid, plain = recorded
    s = llmri.open_store(path).session(sid)
    lut = page.evaluate("() => Array.from(window.llmri.state.luts.diverging)")
    wait_for(page, "() => window.llmri.probes.drawn > 0", what="the probe strip")
    assert page.locator("#probe-strip").is_visible()
    got = page.evaluate("() => ({names: window.llmri.probes.names, layer: window.llmri.probes.layer, "
                        "layers: window.llmri.probes.layers})")  # fmt: skip
    assert got == {"names": ["rnd", "up"], "layer": 12, "layers": [3, 12, 20]}  # rnd's middle layer first
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "probes_strip.png"))
    rnd12 = s.probe("rnd").projection[:, 12]
    page.evaluate(f"window.llmri.seek({len(s) - 1})")  # the playhead off the tokens looked at
    wait_for(page, f"() => window.llmri.state.t === {len(s) - 1}", what="the seek")
    for t in (0, 3, len(s) - 2):  # 0: the attention sink's, clipped
        assert _pixel(page, t, 0)[:3] == _expected_rgb(lut, rnd12, t), t
    assert _pixel(page, 3, 1)[3] == 0  # "up" has no vector at layer 12: nothing drawn in its row
    # another layer: the other probe's row is drawn, the first's is empty
    page.select_option("#probe-layer", "20")
    wait_for(page, "() => window.llmri.probes.layer === 20", what="layer 20")
    up20 = s.probe("up").projection[:, 20]
    for t in (2, 5):
        assert _pixel(page, t, 1)[:3] == _expected_rgb(lut, up20, t), t
    assert _pixel(page, 3, 0)[3] == 0
    # a click on a token seeks there
    box = page.locator("#probe-strip").bounding_box()
    n, t = len(s), 6
    x = box["x"] + 34 + (t + 0.5) / n * (page.evaluate("() => document.getElementById('sparklines').clientWidth") - 38)
    page.mouse.click(x, box["y"] + 6)
    wait_for(page, f"() => window.llmri.state.t === {t}", what="the seek")
    # a session without probes: no strip
    page.evaluate(f"window.llmri.openSession('s0/{plain}')")
    wait_for(page, f"() => window.llmri.state.loaded === 's0/{plain}'", what="the plain session")
    wait_for(page, "() => document.getElementById('probe-wrap').hidden", what="the strip hidden")
