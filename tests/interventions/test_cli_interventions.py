"""``llmri capture --steer / --ablate / --interventions``: the flags read into the same records."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import llmri
from llmri.cli import main
from llmri.commands import interventions as flags
from llmri.interventions import from_meta


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"steer": None, "ablate": None, "interventions_file": None, **kw})


def test_the_flags_read_into_records(tmp_path):
    v = np.arange(8, dtype=np.float32)
    np.save(tmp_path / "v.npy", v)
    records = [llmri.ablate(0, "attn", neurons=[1], positions="prompt")]
    (tmp_path / "r.json").write_text(json.dumps({"interventions": [r.to_dict() for r in records]}))
    got = flags.options(
        _args(steer=[f"{tmp_path / 'v.npy'}@10-12:-2.5"], ablate=["mlp@17", "resid@8:42,100"],
              interventions_file=str(tmp_path / "r.json"))
    )["interventions"]  # fmt: skip
    assert got == [
        records[0],
        llmri.steer(v, [10, 11, 12], scale=-2.5),
        llmri.ablate(17, "mlp"),
        llmri.ablate(8, "resid", neurons=[42, 100]),
    ]
    assert flags.options(_args()) == {}


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors"])
def test_steer_takes_a_saved_direction_with_its_own_layers(tmp_path, suffix):
    from llmri.interventions import Direction

    rows = np.arange(24, dtype=np.float32).reshape(3, 8) + 1
    d = Direction(rows, (2, 3, 4), "fp-x", {"method": "mean_diff"})
    d.save(tmp_path / f"d{suffix}")
    own, chosen = (flags.options(_args(steer=[f"{tmp_path / f'd{suffix}'}@{at}"]))["interventions"][0]
                   for at in (":0.5", "3:2"))  # fmt: skip
    loaded = llmri.load_direction(tmp_path / f"d{suffix}")
    assert own == llmri.steer(loaded, scale=0.5)
    assert own.layers == (2, 3, 4) and own.scale == 0.5
    assert chosen == llmri.steer(loaded, [3], scale=2.0)
    np.testing.assert_array_equal(np.asarray(chosen.direction.array()).reshape(-1), rows[1])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steer": ["v.npy"]}, "--steer takes FILE@LAYERS"),
        ({"steer": ["missing.npy@3"]}, "cannot read missing.npy"),
        ({"ablate": ["mlp"]}, "--ablate takes SIGNAL@LAYERS"),
        ({"ablate": ["mlp@x"]}, "layers must look like"),
        ({"ablate": ["logits@3"]}, "unknown signal 'logits'"),
        ({"interventions_file": "nope.json"}, "no such file"),
    ],
)
def test_bad_flags_fail_with_one_line(kw, match):
    with pytest.raises(llmri.CaptureError, match=match) as info:
        flags.options(_args(**kw))
    assert "\n" not in str(info.value)


def test_a_backend_that_cannot_is_refused_before_any_session(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    rc = main(["capture", "hi", "-o", str(out), "--backend", "synthetic", "--ablate", "mlp@0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "backend='hf'" in err
    assert not out.exists()


@pytest.mark.slow
def test_capture_steered_from_the_command_line_and_info_shows_it(real_model, tmp_path, capsys):
    v = np.random.default_rng(0).standard_normal(576).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    out = tmp_path / "s.zarr"
    argv = ["capture", "The capital of France is", "-o", str(out), "--raw", "--max-new-tokens", "2", "--quiet"]
    rc = main([*argv, "--steer", f"{tmp_path / 'v.npy'}@3-4:2", "--ablate", "mlp@20"])
    sid, err = capsys.readouterr()
    assert rc == 0, err
    s = llmri.open_store(out).session(sid.strip())
    assert from_meta(s.meta) == (llmri.steer(v, [3, 4], scale=2.0), llmri.ablate(20, "mlp"))
    assert main(["info", str(out), sid.strip()]) == 0
    text = capsys.readouterr().out
    assert "intervention steer resid layers 3,4 positions generated scale 2" in text
    assert "intervention ablate mlp layers 20 positions all all neurons to 0" in text
    assert main(["info", str(out), sid.strip(), "--json"]) == 0  # what --interventions reads back
    (tmp_path / "info.json").write_text(capsys.readouterr().out)
    assert tuple(flags.read_file(str(tmp_path / "info.json"))) == from_meta(s.meta)
