"""One GGUF control vector steers the hf and llama.cpp backends at the same block: a tiny float32
Llama written as GGUF (tests/gguf_tiny.py), llmri's direction file read by llmri for hf and applied
by llama.cpp's own control-vector call (llama_apply_adapter_cvec) for llama.cpp; the steered frames
agree, and a direction at block N moves resid at layers >= N only, in both."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri._errors import CaptureError
from llmri.interventions import Direction, load_direction

pytest.importorskip("llama_cpp")

import gguf_tiny  # noqa: E402
from llmri.backends.llamacpp import load_gguf  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog"
D, L = 64, 3
COS_MIN = 0.9999  # tests/backends/test_llamacpp_archs.py's bound for the same pair
OPTS = {"reducer": "neurons", "frame_dtype": "float32", "chat": False, "max_new_tokens": 3, "ignore_eos": True}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tok = llmri.load_model().tokenizer
    hf = gguf_tiny.tiny_hf("llama")
    path = gguf_tiny.write_gguf(hf, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")
    g = load_gguf(str(path), n_threads=2)
    yield llmri.wrap(hf, tok), g
    g.close()


@pytest.fixture(scope="module")
def dfile(tmp_path_factory):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(2, D)).astype(np.float32)
    v *= 3.0 / np.linalg.norm(v, axis=1, keepdims=True)
    return Direction(v, (1, 2), None, {"method": "random"}).save(tmp_path_factory.mktemp("dir") / "d.gguf")


def _frames(s, signal: str) -> np.ndarray:
    return s.frames(signal).reshape(len(s), L, -1)[:, :, :D].astype(np.float64)


def _resid(s) -> np.ndarray:
    return _frames(s, "resid")


def _cos(a, b):
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def _run(model, backend, records):
    return llmri.capture(model, TEXT, backend=backend, interventions=records, **OPTS)


@pytest.mark.parametrize(("layer", "positions"), [(1, "all"), (2, "generated")])
def test_the_same_file_steers_both_backends_at_the_same_block(pair, dfile, layer, positions):
    hf_model, g = pair
    d = load_direction(dfile)
    rec = [llmri.steer(d, layers=layer, scale=1.5, positions=positions)]
    runs = {}
    for name, model in (("hf", hf_model), ("llama.cpp", g)):
        base, steered = _run(model, name, []), _run(model, name, rec)
        runs[name] = steered
        a, b = _resid(base), _resid(steered)
        n_prompt = steered.tokens.role.count("prompt")
        moved = np.linalg.norm(b - a, axis=-1) / np.linalg.norm(a, axis=-1)  # [T, L]
        # the positions whose tokens so far are the baseline's (a steered answer may change later inputs)
        same = int(np.cumprod(base.tokens.ids == steered.tokens.ids).sum())
        rows = slice(None, same) if positions == "all" else slice(n_prompt, same)
        assert same >= n_prompt + (positions == "generated"), name
        # below the block nothing moves; at it and above, the steered positions do
        assert moved[:same, :layer].max() <= 1e-6, name
        assert moved[rows, layer:].min() > 1e-2, name
        if positions == "generated":
            assert moved[:n_prompt].max() <= 1e-6, name
        assert steered.meta["interventions"] == [r.to_dict() for r in rec]
    assert runs["hf"].text == runs["llama.cpp"].text
    for sig in ("resid", "mlp", "attn"):  # mlp: llama.cpp's first ffn_out-N, its residual sum renamed
        a, b = (_frames(runs[k], sig) for k in ("hf", "llama.cpp"))
        assert _cos(a, b).min() >= COS_MIN, sig


def test_a_plain_capture_after_a_steered_one_is_unsteered(pair, dfile):
    _, g = pair
    before = _resid(_run(g, "llama.cpp", []))
    _run(g, "llama.cpp", [llmri.steer(load_direction(dfile), scale=2.0, positions="all")])
    np.testing.assert_array_equal(_resid(_run(g, "llama.cpp", [])), before)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (lambda d: llmri.ablate(1, "mlp"), "llama.cpp cannot apply ablate.*use backend='hf'"),
        (lambda d: llmri.steer(d.at(1)[0], layers=1, signal="attn"), "cannot apply steer on 'attn'.*backend='hf'"),
        (lambda d: llmri.steer(d, layers=1, positions="last"), "whole steps.*backend='hf'"),
        (lambda d: llmri.steer(d.at(1)[0], layers=0), "never steers layer 0.*backend='hf'"),
        (lambda d: llmri.steer(d, layers=1, norm="match"), "norm='match'.*backend='hf'"),
    ],
)
def test_what_llama_cpp_cannot_do_is_refused_naming_hf(pair, dfile, record, match):
    _, g = pair
    with pytest.raises(CaptureError, match=match) as e:
        _run(g, "llama.cpp", [record(load_direction(dfile))])
    assert "\n" not in str(e.value)
