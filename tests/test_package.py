"""The package as a user installs it: the wheel's contents, the console script, the demo."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

import llmri


def _llmri(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmri", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_public_api_is_sorted_and_importable():
    assert len(set(llmri.__all__)) == len(llmri.__all__)
    for name in llmri.__all__:
        assert hasattr(llmri, name), name


def test_cli_help_and_no_command():
    r = _llmri("--help")
    assert r.returncode == 0
    for cmd in ("capture", "info", "export", "view", "demo", "backends"):
        assert cmd in r.stdout
    assert _llmri().returncode == 2


def test_backends_command_lists_what_is_installed():
    r = _llmri("backends")
    assert r.returncode == 0
    assert "hf" in r.stdout and "resid,attn,mlp" in r.stdout


@pytest.mark.slow
def test_wheel_ships_the_web_client_and_calibration_text(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        capture_output=True,
        text=True,
        cwd=llmri.__file__.rsplit("/src/", 1)[0],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("llmri-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llmri/data/calibration.txt" in names
    assert "llmri/viewer_web/index.html" in names
    assert any(n.startswith("llmri/viewer_web/js/") and n.endswith(".js") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


@pytest.mark.slow
def test_demo_captures_once_and_summarises(tmp_path, real_model):
    r = _llmri("demo", "--no-view", "--max-new-tokens", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "session" in r.stdout and "answer" in r.stdout and "resid norm by layer" in r.stdout
    # the rate a user compares: generation alone, not the one-time calibration before it
    assert "tokens/s generating (set-up before the first token" in r.stdout
    store = llmri.open_store(tmp_path / "llmri-demo.zarr")
    (s,) = store.sessions()
    assert s.status == "complete" and s.tokens.role.count("generated") == 8
    again = _llmri("demo", "--no-view", cwd=tmp_path)
    assert again.returncode == 0 and "reusing" in again.stdout
    assert len(llmri.open_store(tmp_path / "llmri-demo.zarr").sessions()) == 1
