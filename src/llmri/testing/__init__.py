"""What llmri's own tests and benchmarks use, shipped so a third party can use it too: a served
viewer and headless Chromium (``browser``), and the test suite every FrameStore runs (``store``:
subclass it for your own store, as zarr ships ``zarr.testing.store``)."""

from .browser import BROWSER_ARGS, CHROMIUM, ServedApp, launch_chromium

__all__ = ["BROWSER_ARGS", "CHROMIUM", "ServedApp", "launch_chromium"]
