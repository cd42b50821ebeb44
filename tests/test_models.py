"""Model loading: the bundled default, local directories, and every refusal a user can meet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llmri
from llmri import ModelLoadError
from llmri.models import default_gguf_path, gguf_model_dir


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return gguf_model_dir(default_gguf_path())


def _link(src: Path, dst: Path) -> None:
    os.symlink(src, dst)


@pytest.mark.slow
def test_default_model_is_reachable_and_loads_from_safetensors(real_model, default_dir):
    assert real_model.model is not None and real_model.tokenizer is not None
    assert real_model.n_layers == 30 and real_model.d_model == 576
    assert (default_dir / "model.safetensors").is_file() and (default_dir / "config.json").is_file()
    assert "quantization_config" not in json.loads((default_dir / "config.json").read_text())
    again = llmri.load_model(str(default_dir))
    assert again.fingerprint == real_model.fingerprint
    assert llmri.load_model("default").fingerprint == real_model.fingerprint


def test_missing_path():
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        llmri.load_model("/nonexistent/model")
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        llmri.load_model("./not-here")


def test_hub_id_offline_gives_a_clear_message(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="could not be fetched from the Hugging Face hub"):
        llmri.load_model("some-org/some-model")


def test_pickle_only_directory_is_refused(tmp_path, default_dir):
    (tmp_path / "config.json").write_text((default_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    _link(default_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        llmri.load_model(tmp_path)


def test_directory_without_tokenizer(tmp_path, default_dir):
    (tmp_path / "config.json").write_text((default_dir / "config.json").read_text())
    _link(default_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        llmri.load_model(tmp_path)


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        llmri.load_model(tmp_path)


def test_not_a_causal_lm(tmp_path, default_dir):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        tmp_path
    )
    _link(default_dir / "model.safetensors", tmp_path / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        _link(default_dir / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match="vit model is not a causal language model"):
        llmri.load_model(tmp_path)


def test_gguf_that_cannot_be_dequantized(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="transformers cannot load this GGUF file"):
        llmri.load_model(bad)
    left = [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # nothing half-written


def test_a_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="must be .gguf"):
        llmri.load_model(f)


def test_bad_dtype(default_dir):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        llmri.load_model(default_dir, dtype="float8")


@pytest.mark.slow
def test_a_crash_mid_conversion_leaves_no_half_written_model(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path))

    def crash(*a, **kw):
        raise KeyboardInterrupt  # as if the process were stopped while writing

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        llmri.load_model()
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []
