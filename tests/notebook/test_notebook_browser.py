"""The notebook widget in a real JupyterLab, in headless Chromium: the test starts JupyterLab on 127.0.0.1
with a token (private HOME, config, data and runtime dirs; a kernel of this venv's python), opens
examples/quickstart.ipynb, runs every cell, and checks the viewer's canvas inside the widget's iframe:
non-blank tiles that change when the timeline moves, and a streamed capture that drew its frames.
The same quickstart runs in Notebook 7 (the ``notebook`` package). The screenshots land in
artifacts/notebook-quickstart.png and artifacts/notebook7-quickstart.png (gitignored)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")
pytest.importorskip("anywidget")
playwright_api = pytest.importorskip("playwright.sync_api")

from llmri.testing import CHROMIUM  # noqa: E402
from notebook_helpers import ARTIFACTS, EXAMPLES, jupyter_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)", allow_module_level=True)

# non-background pixels of the viewer's main canvas, and a digest of them
CANVAS = """() => {
  const c = document.getElementById("view");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i] + d[i + 1] + d[i + 2];
    if (v > 40) lit++;
    sum = (sum * 31 + v) % 1000000007;
  }
  return { w: c.width, h: c.height, lit, sum, t: window.llmri.state.t, drawn: window.llmri.drawn };
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_jupyter(root: Path, app: str, *options: str):
    """``python -m <app>`` (jupyterlab, or notebook for Notebook 7) serving ``root`` on loopback with
    a token, confined to ``root/.jupyter``; yields ``(base url, token)``, stops it afterwards."""
    env = jupyter_env(root / ".jupyter")
    # no "official Jupyter news?" toast over the output (user settings live in the private config dir)
    settings = root / ".jupyter" / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}'
    )
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(root / ".jupyter" / "workspaces")
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        app,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        *options,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI and containers run as root
        cmd.append("--allow-root")
    log = open(root / f"{app}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{app} did not start: {(root / f'{app}.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield base, token
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a temp dir that holds the quickstart; ``(base url, token, root)``."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(EXAMPLES / "quickstart.ipynb", root / "quickstart.ipynb")
    options = [
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    for base, token in serve_jupyter(root, "jupyterlab", *options):
        yield base, token, root


def open_and_run_all(page, url: str) -> None:
    """Open a notebook page (JupyterLab or Notebook 7: both expose ``window.jupyterapp``), wait for its
    kernel (this venv's python) to be up, and run every cell."""
    page.goto(url)
    loaded = "() => window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')"
    page.wait_for_function(loaded, timeout=120_000)
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.connectionStatus === 'connected'; }",
        timeout=120_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def test_quickstart_in_jupyterlab_draws_tiles_that_follow_the_timeline(browser, lab):
    base, token, root = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        open_and_run_all(page, f"{base}/lab/tree/quickstart.ipynb?token={token}")
        frames = page.locator("iframe[title='llmri viewer']")
        frames.first.wait_for(timeout=300_000)
        viewer = page.frame_locator("iframe[title='llmri viewer']").first
        # the viewer inside the widget's iframe is up and has drawn a frame
        first = frames.first.element_handle().content_frame()
        first.wait_for_function("() => window.llmri && window.llmri.ready && window.llmri.drawn >= 0", timeout=120_000)
        before = first.evaluate(CANVAS)
        assert before["w"] > 100 and before["h"] > 100, before
        assert before["lit"] > 0.05 * before["w"] * before["h"], before  # tiles, not a blank canvas
        # the scrub cell set viewer.t = 40 from Python: the viewer followed
        first.wait_for_function("() => window.llmri.drawn === 40", timeout=120_000)
        at40 = first.evaluate(CANVAS)
        # move the timeline as a user would: the slider, then the keyboard
        viewer.locator("#slider").focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        first.wait_for_function("() => window.llmri.drawn === 45", timeout=60_000)
        after = first.evaluate(CANVAS)
        assert after["lit"] > 0.05 * after["w"] * after["h"], after
        assert after["sum"] != at40["sum"], (at40, after)
        # hover read-outs: a pixel of the first tile reads its value
        box = viewer.locator("#view").bounding_box()
        assert box is not None
        x, y = first.evaluate(
            """() => { const L = window.llmri.renderer.layout;
              const [x, y] = window.llmri.renderer.tileXY(L.grids[0], 7); return [x + L.D / 2, y + L.E / 2]; }"""
        )
        page.mouse.move(box["x"] + x, box["y"] + y)
        readout = viewer.locator("#readout")
        readout.filter(has_not_text="hover a pixel").wait_for(timeout=20_000)
        assert "layer" in readout.inner_text() and "resid" in readout.inner_text(), readout.inner_text()
        # the token strip agrees with the frame drawn
        counter = viewer.locator("#counter").inner_text()
        assert counter.startswith("token 46 / 60"), counter
        # the streamed capture: the notebook's wait cell held the kernel, so it opens complete, on frame 0
        second = complete_viewer(frames.nth(1))
        streamed = second.evaluate(CANVAS)
        assert streamed["lit"] > 0.05 * streamed["w"] * streamed["h"], streamed
        # a stream shown in a cell of its own, the kernel left free: the viewer animates while it records
        idle = "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'"
        page.wait_for_function(idle)
        page.evaluate(
            """async (code) => {
              const panel = window.jupyterapp.shell.currentWidget;
              const m = panel.content.model;
              m.sharedModel.insertCell(m.cells.length, { cell_type: "code", source: code });
              panel.content.activeCellIndex = m.cells.length - 1;
              await window.jupyterapp.commands.execute("notebook:run-cell");
            }""",
            'anim = llmri.show(llmri.stream(model, "Count to fifty.", chat=True, max_new_tokens=160, ignore_eos=True))',
        )
        frames.nth(2).wait_for(timeout=120_000)
        third = frames.nth(2).element_handle().content_frame()
        third.wait_for_function("() => window.llmri && window.llmri.state.cur", timeout=120_000)
        seen = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen.append(
                third.evaluate(
                    "() => [window.llmri.state.cur.summary.status, window.llmri.state.src.total, window.llmri.drawn]"
                )
            )
            if seen[-1][0] == "complete":
                break
            time.sleep(0.25)
        recording = [n for status, n, _ in seen if status == "recording"]
        assert len(set(recording)) >= 3, (seen, errors)  # frames appeared while the capture ran
        assert recording == sorted(recording), seen
        # complete, holding every frame seen while recording: the last frames may have been counted
        # before the status turned (a chunk header raises the total at once), so >=, not >
        assert seen[-1][0] == "complete" and seen[-1][1] >= max(recording), (seen, errors)
        end = "() => [window.llmri.drawn, window.llmri.state.t, window.llmri.state.src.total]"
        try:
            third.wait_for_function("() => window.llmri.drawn === window.llmri.state.src.total - 1", timeout=30_000)
        except playwright_api.TimeoutError:
            pytest.fail(f"the playhead did not follow the newest frame: {third.evaluate(end)} {seen}")
        assert third.evaluate(CANVAS)["lit"] > 0, seen  # the playhead followed the newest frame
        frames.first.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "notebook-quickstart.png"))
        frames.first.screenshot(path=str(ARTIFACTS / "notebook-quickstart-widget.png"))
        assert not errors, errors
    finally:
        page.context.close()  # new_page's own context
    assert not list(Path(root).glob("*.zarr"))


def complete_viewer(frame):
    """The content frame of a widget's iframe once its viewer shows a complete session."""
    frame.wait_for(timeout=300_000)
    inner = frame.element_handle().content_frame()
    inner.wait_for_function(
        "() => window.llmri && window.llmri.ready && window.llmri.state.cur"
        " && window.llmri.state.cur.summary.status === 'complete' && window.llmri.drawn >= 0",
        timeout=300_000,
    )
    return inner


def notebook7_own(stack: str) -> bool:
    """An error raised inside Notebook 7's own core bundle only. Notebook 7.6.5's page raises one
    ("Cannot read properties of undefined (reading 'schema')", in its shortcuts settings) while it
    loads a notebook with a single print(1) cell, without llmri or any widget."""
    frames = [line for line in stack.splitlines() if "://" in line]
    return bool(frames) and all("/static/notebook/" in line for line in frames)


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    """Notebook 7 (the ``notebook`` package) serving a temp dir that holds the quickstart."""
    pytest.importorskip("notebook")
    root = tmp_path_factory.mktemp("nb7")
    shutil.copy(EXAMPLES / "quickstart.ipynb", root / "quickstart.ipynb")
    for base, token in serve_jupyter(root, "notebook", "--JupyterNotebookApp.expose_app_in_browser=True"):
        yield base, token, root


def test_quickstart_in_notebook7_draws_tiles_and_scrubs(browser, notebook7):
    """The same widget in Notebook 7's page (its own shell and widget manager): tiles drawn, the
    viewer follows ``viewer.t`` from Python and the keyboard, and the streamed capture completes."""
    base, token, root = notebook7
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda e: None if notebook7_own(e.stack or "") else errors.append(str(e)))
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        open_and_run_all(page, f"{base}/notebooks/quickstart.ipynb?token={token}")
        frames = page.locator("iframe[title='llmri viewer']")
        frames.first.wait_for(timeout=300_000)
        first = frames.first.element_handle().content_frame()
        drawn40 = "() => window.llmri && window.llmri.ready && window.llmri.drawn === 40"
        first.wait_for_function(drawn40, timeout=120_000)
        at40 = first.evaluate(CANVAS)
        assert at40["lit"] > 0.05 * at40["w"] * at40["h"], at40
        page.frame_locator("iframe[title='llmri viewer']").first.locator("#slider").focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        first.wait_for_function("() => window.llmri.drawn === 43", timeout=60_000)
        assert first.evaluate(CANVAS)["sum"] != at40["sum"]
        second = complete_viewer(frames.nth(1))
        assert second.evaluate(CANVAS)["lit"] > 0
        frames.first.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "notebook7-quickstart.png"))
        assert not errors, errors
    finally:
        page.context.close()  # new_page's own context
    assert not list(Path(root).glob("*.zarr"))
