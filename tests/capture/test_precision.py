"""Frames that never lie (docs/precision.md): the frame dtype setting, overflow counted at capture and
reported once, the three dtypes through the store, xarray, the viewer's encoding, and the tolerances.

The model tests use a tiny Llama whose embeddings are scaled so its residual reaches ~1e6, built as a
new user would (``from_config``, saved, ``load_model(dir)``): float16 overflows there, bfloat16 and
float32 do not, and float32 frames are the model's hidden states exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import llmri
from llmri.capture.precision import (
    FrameOverflowWarning,
    OverflowCounter,
    check_frame_dtype,
    difference_tolerance,
    largest,
    rounding_error,
)
from llmri.frame import bfloat16_bits, from_bfloat16_bits

PROMPT = "Why is the sky blue?"
DTYPES = ("float16", "bfloat16", "float32")
SCALE = 5e7  # embeddings ~0.02 * 5e7: the residual at ~1e6, past float16's 65,504


# -- no model ------------------------------------------------------------------------------------
def test_rounding_error_and_difference_tolerance():
    # at |x| = 22,500 (the bundled model's attention sink) float16 rounds by up to 8 (issue 25)
    assert rounding_error("float16", 22500) == 8.0
    assert rounding_error("bfloat16", 22500) == 64.0
    assert rounding_error("float32", 22500) == 2.0**-10
    assert rounding_error("float16", 1.0) == 2.0**-11  # the relative rounding, 2^-11 of the value
    assert rounding_error("float16", 0.0) == 2.0**-25  # the subnormal spacing, halved
    assert np.isinf(rounding_error("float16", 70000.0)) and np.isfinite(rounding_error("bfloat16", 1e30))
    # the bound holds: every float16 value in a binade is within it of the float32 value
    x = np.random.default_rng(0).uniform(16384, 32768, 10000).astype(np.float32)
    assert np.abs(x.astype(np.float16).astype(np.float32) - x).max() <= rounding_error("float16", 32767)
    a, b = np.float32(22500.3), np.float32(22497.1)
    stored = float(np.float16(a)) - float(np.float16(b))
    assert abs(stored - (float(a) - float(b))) <= difference_tolerance("float16", a, b)
    assert difference_tolerance("float16", [1.0, 70000.0]).tolist() == [2.0**-10, np.inf]
    assert largest("float16") == 65504.0
    with pytest.raises(llmri.CaptureError, match="frame_dtype"):
        check_frame_dtype("int8")


def test_bfloat16_bits_match_torch():
    x = np.concatenate(
        [
            np.random.default_rng(1).standard_normal(4096).astype(np.float32) * 1e6,
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32),
        ]
    )
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    got = from_bfloat16_bits(bfloat16_bits(x))
    assert np.array_equal(got, want)
    assert np.isnan(from_bfloat16_bits(bfloat16_bits(np.array([np.nan], np.float32))))[0]


def test_overflow_counter_message():
    c = OverflowCounter(["resid", "mlp"], "float16")
    c.add(np.zeros((2, 3)))
    assert c.total == 0 and c.message() == ""
    c.add(np.array([[0, 4, 2], [0, 0, 0]]))
    assert c.meta() == {"total": 6, "per_layer": {"resid": [0, 4, 2], "mlp": [0, 0, 0]}}
    assert "6 frame values overflowed float16" in c.message() and "6 resid (layers 1-2)" in c.message()
    with pytest.warns(FrameOverflowWarning):
        c.warn()


def test_scales_ignore_overflow():
    from llmri.render.grid import fallback_scales

    tiles = np.ones((2, 4, 4), np.float32)
    tiles[0, 0, :3] = np.inf
    tiles[1] = np.inf
    sc = fallback_scales(tiles)
    assert np.all(np.isfinite(sc)) and sc[0] == 1.0
    from llmri.render.grid import OVERFLOW, render_frame

    rgb = render_frame(tiles, None, "energy")
    assert tuple(rgb[0, 0]) == OVERFLOW and tuple(rgb[0, 3]) != OVERFLOW  # exports draw it as the viewer does


@pytest.mark.parametrize("frame_dtype", DTYPES)
def test_encoding_carries_each_dtype(frame_dtype):
    from llmri.viewer.encoding import decode_array, encode_frames

    pytest.importorskip("fastapi")
    x = np.array([[1.5, -2.0e6, np.inf], [-np.inf, 0.0, 3.0e-3]], np.float32)
    with np.errstate(over="ignore"):  # -2e6 does not fit float16: that is the point
        head, back = decode_array(encode_frames(x, frame_dtype, kind="frames"))
        want = {"float16": x.astype(np.float16), "bfloat16": from_bfloat16_bits(bfloat16_bits(x)), "float32": x}
    assert head["dtype"] == frame_dtype
    assert np.array_equal(back, want[frame_dtype])


def test_synthetic_capture_each_dtype_through_the_store(synthetic_model, tmp_path):
    path = tmp_path / "run.zarr"
    got = {}
    for d in DTYPES:
        mem = llmri.capture(synthetic_model, PROMPT, max_new_tokens=3, frame_dtype=d, store=path, meta={"dt": d})
        assert mem.meta["frame_dtype"] == d and mem.meta["overflow"]["total"] == 0
        got[d] = mem
    store = llmri.open_store(path)
    import zarr

    for d, mem in got.items():
        z = store.session(mem.id)
        # bfloat16's frames hold bits a format-1 reader would take for values: its session is format 2
        version = 2 if d == "bfloat16" else 1
        group = zarr.open_group(str(path), mode="r")[f"sessions/{mem.id}"]
        assert group.attrs["llmri"]["format_version"] == z.meta["format_version"] == version
        a, b = mem.frames("resid"), z.frames("resid")
        assert a.dtype == b.dtype == (np.float16 if d == "float16" else np.float32)
        assert np.array_equal(a, b)
    with pytest.raises(llmri.CaptureError, match="frame_dtype"):
        llmri.stream(synthetic_model, PROMPT, frame_dtype="float64")


# -- the scaled tiny Llama -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """The tiny Llama with embeddings scaled so its residual reaches ~1e6: saved, loaded as a user would."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmri.models import gguf_model_dir
    from llmri.models.identity import default_gguf_path

    tok = AutoTokenizer.from_pretrained(gguf_model_dir(default_gguf_path()))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(SCALE)
    where = tmp_path_factory.mktemp("scaled")
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return llmri.load_model(str(where))


@pytest.fixture(scope="module")
def scaled_sessions(scaled, tmp_path_factory):
    """One neurons capture per frame dtype, into one Zarr store, and the warnings each raised."""
    path = tmp_path_factory.mktemp("prec") / "run.zarr"
    out = {}
    for d in DTYPES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = llmri.capture(
                scaled,
                PROMPT,
                chat=False,
                max_new_tokens=3,
                ignore_eos=True,
                reducer="neurons",
                frame_dtype=d,
                store=path,
            )
        out[d] = (s, [w for w in caught if issubclass(w.category, FrameOverflowWarning)])
    return path, out


@pytest.mark.slow
def test_float16_overflow_is_counted_and_reported_once(scaled_sessions):
    _, out = scaled_sessions
    s, warned = out["float16"]
    resid = s.frames("resid")
    n_inf = np.isinf(resid).sum(axis=(0, 2, 3))
    assert n_inf.sum() > 0  # the residual at ~1e6 does not fit float16
    o = s.meta["overflow"]
    assert o["per_layer"]["resid"] == n_inf.tolist() and o["total"] == sum(sum(v) for v in o["per_layer"].values())
    assert len(warned) == 1 and f"{o['total']} frame values overflowed float16" in str(warned[0].message)


@pytest.mark.slow
@pytest.mark.parametrize("frame_dtype", ["bfloat16", "float32"])
def test_bfloat16_and_float32_keep_every_value(scaled_sessions, frame_dtype):
    _, out = scaled_sessions
    s, warned = out[frame_dtype]
    assert not warned and s.meta["overflow"]["total"] == 0
    for sig in s.signals:
        f = s.frames(sig)
        assert f.dtype == np.float32 and np.isfinite(f).all()
    assert np.abs(s.frames("resid")).max() > 1e5


@pytest.mark.slow
def test_float32_frames_are_the_hidden_states_exactly(scaled, scaled_sessions):
    _, out = scaled_sessions
    s32, _ = out["float32"]
    sbf, _ = out["bfloat16"]
    ids = torch.tensor([s32.tokens.ids[:-1].tolist()])  # the last token was never fed back
    with torch.no_grad():
        hs = scaled.model(ids, output_hidden_states=True).hidden_states
    d = scaled.model.config.hidden_size
    n_layers = len(s32.layers)
    got = s32.frames("resid")[: ids.shape[1]].reshape(ids.shape[1], n_layers, -1)[..., :d]
    # hidden_states[l + 1] is block l's output; the last one has been through the final norm
    for layer in range(n_layers - 1):
        want = hs[layer + 1][0].numpy()
        assert np.array_equal(got[:, layer], want), layer
        want_bf = hs[layer + 1][0].to(torch.bfloat16).float().numpy()
        bf = sbf.frames("resid")[: ids.shape[1]].reshape(ids.shape[1], n_layers, -1)[..., :d]
        assert np.array_equal(bf[:, layer], want_bf), layer


@pytest.mark.slow
def test_each_dtype_reads_back_from_zarr_and_xarray_without_llmri(scaled_sessions):
    xr = pytest.importorskip("xarray")
    path, out = scaled_sessions
    store = llmri.open_store(path)
    for d, (mem, _) in out.items():
        z = store.session(mem.id)
        assert z.meta["frame_dtype"] == d and z.meta["overflow"] == mem.meta["overflow"]
        assert np.array_equal(z.frames("resid"), mem.frames("resid"))
        ds = z.to_xarray()
        assert np.array_equal(ds.resid.values, mem.frames("resid"))
        # plain xarray, as FORMAT.md says: bfloat16 is stored as its bits (uint16), decoded by one line
        frames = xr.open_zarr(path, group=f"sessions/{mem.id}/frames", consolidated=False)
        raw = frames.resid.values[: len(mem)]
        if d == "bfloat16":
            assert raw.dtype == np.uint16 and frames.resid.attrs["llmri"]["dtype"] == "bfloat16"
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        assert raw.dtype == (np.float16 if d == "float16" else np.float32)
        assert np.array_equal(raw, mem.frames("resid"))


@pytest.mark.slow
def test_cli_says_overflow_in_one_line(scaled, tmp_path, capsys):
    from llmri.cli import main

    rc = main(
        [
            "capture",
            PROMPT,
            "-o",
            str(tmp_path / "c.zarr"),
            "--model",
            scaled.path,
            "--raw",
            "--reducer",
            "neurons",
            "--max-new-tokens",
            "2",
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    lines = [x for x in err.splitlines() if "overflow" in x]
    assert len(lines) == 1 and lines[0].startswith("llmri capture: warning: "), err
    assert "FrameOverflowWarning" not in err
    rc = main(
        [
            "capture",
            PROMPT,
            "-o",
            str(tmp_path / "c.zarr"),
            "--model",
            scaled.path,
            "--raw",
            "--reducer",
            "neurons",
            "--max-new-tokens",
            "2",
            "--quiet",
            "--frame-dtype",
            "bfloat16",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and "overflow" not in err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_count_overflow_is_exact_at_the_threshold(dtype):
    from llmri.capture.precision import count_overflow

    info = torch.finfo(dtype)
    top = info.max
    half = info.eps * top / (2 * (2 - info.eps))  # half a unit in the last place of the largest value
    row = torch.tensor([top, top + half * 0.99, top + half, -(top + half), float("inf"), float("nan"), 1.0, 0.0])
    values = row.reshape(1, 2, 4).repeat(2, 1, 1)
    values[1] = values[1].clamp(-1, 1).nan_to_num(0.0)  # a tile of nothing large
    stored = values.to(dtype)
    want = (stored.isinf() & values.isfinite()).sum(dim=(-2, -1))
    assert want.tolist() == [2, 0]  # exactly halfway rounds to inf (to even), just under it does not
    assert count_overflow(values, stored).tolist() == want.tolist()
    assert count_overflow(values[1:], stored[1:]).tolist() == [0]  # the aminmax shortcut
