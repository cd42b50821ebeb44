"""``llmri export STORE ID --against baseline``: a steered session beside its baseline and their
difference, as one video, on the bundled model; each panel checked against the frames themselves."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri.cli import main
from llmri.render.grid import frame_size, render_frame
from llmri.render.pair import PANEL_GAP, STRIP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(real_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("pair") / "runs.zarr"
    base = llmri.capture(real_model, "The capital of France is", store=store, max_new_tokens=6, ignore_eos=True)
    d = np.zeros(real_model.d_model, dtype=np.float32)
    d[7] = 60.0
    steered = llmri.rerun(base, [llmri.steer(d, layers=10, positions="generated")], model=real_model, store=store)
    return store, base, steered


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def panels(img, session, pixel):
    h, w = frame_size(len(session.layers), *session.tile, pixel=pixel)
    return [img[STRIP : STRIP + h, k * (w + PANEL_GAP) : k * (w + PANEL_GAP) + w] for k in range(3)]


def test_pair_panels_are_both_frames_and_their_difference(pair, tmp_path, capsys):
    from PIL import Image

    store, base, steered = pair
    scales = base.meta["scales"]["resid"]
    n_prompt = base.tokens.role.count("prompt")
    assert 0 < n_prompt < len(base)
    for frame in (0, len(base) - 1):
        out = tmp_path / f"f{frame}.png"
        rc, _, err = run_cli(capsys, "export", store, steered.id, "--against", "baseline", "-f", "png",
                             "--frame", frame, "--signal", "resid", "--pixel", "2", "-o", out)  # fmt: skip
        assert rc == 0, err
        a, b, diff = panels(np.asarray(Image.open(out).convert("RGB")), base, 2)
        fa, fb = base.frames("resid", frame, frame + 1)[0], steered.frames("resid", frame, frame + 1)[0]
        np.testing.assert_array_equal(a, render_frame(fa, scales, "energy", pixel=2))
        np.testing.assert_array_equal(b, render_frame(fb, scales, "energy", pixel=2))  # A's scales on both
        want = render_frame(fb.astype(np.float32) - fa.astype(np.float32), scales, "diverging", pixel=2)
        np.testing.assert_array_equal(diff, want)
        white = render_frame(np.zeros_like(fa, dtype=np.float32), scales, "diverging", pixel=2)
        if frame < n_prompt:  # the prompt is not steered (positions="generated"): no difference at all
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(diff, white)
        else:  # the last token's forward ran steered from layer 10 on
            assert (diff != white).any()


def test_pair_gif_has_a_frame_per_token(pair, tmp_path, capsys):
    from PIL import Image

    store, base, steered = pair
    rc, out, err = run_cli(capsys, "export", store, steered.id, "--against", base.id, "-f", "gif", "-o",
                           tmp_path / "pair.gif")  # fmt: skip
    assert rc == 0, err
    with Image.open(tmp_path / "pair.gif") as g:
        assert g.n_frames == max(len(base), len(steered))
        h, w = frame_size(len(base.layers), *base.tile, pixel=4)
        assert g.size == (3 * w + 2 * PANEL_GAP, h + 2 * STRIP)


def test_pair_bad_input_is_one_line(pair, tmp_path, capsys):
    store, base, steered = pair
    for argv, match in (
        ((base.id, "--against", "baseline", "-f", "gif"), "has no baseline"),
        ((steered.id, "--against", "baseline", "-f", "json"), "a pair exports as gif, mp4, png"),
        ((steered.id, "--against", "nope", "-f", "gif"), "nope"),
    ):
        rc, _, err = run_cli(capsys, "export", store, *argv, "-o", tmp_path / "x.out")
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and match in lines[0] and "Traceback" not in err, err
