"""Model loading: the bundled default, local directories, and every refusal a user can meet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import llmri
from llmri import ModelLoadError
from llmri.models import gguf_model_dir
from llmri.models.identity import default_gguf_path


@pytest.fixture(scope="module")
def default_dir() -> Path:
    # LLMRI_TEST_MODEL_DIR: the bundled model's config and tokenizer files without its weights, where
    # the 98 MB GGUF is not installed (the GPU machine: benchmarks/gpu_prepare.sh carries them there);
    # enough for the tests built on tiny_dir, which take only the tokenizer from it
    carried = os.environ.get("LLMRI_TEST_MODEL_DIR")
    return Path(carried) if carried else gguf_model_dir(default_gguf_path())


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


# -- your own transformers model: llmri.wrap, (model, tokenizer), tokenizer= -------------------

PROMPT = "Why is the sky blue?"


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _state(module) -> dict:
    """What llmri must leave as it was: each module's class, instance forward, training flag and
    hooks, each tensor's identity and device, the attention implementation."""
    return {
        "modules": [(n, type(m).__name__, "forward" in vars(m), m.training) for n, m in module.named_modules()],
        "tensors": [(n, id(t), t.device, t.dtype) for n, t in [*module.named_parameters(), *module.named_buffers()]],
        "hooks": _hooks(module),
        "attn": module.config._attn_implementation,
        "output_attentions": module.config.output_attentions,
    }


@pytest.fixture(scope="module")
def own_model(real_model):
    """SmolLM2 loaded by the user with transformers (a second instance, not llmri's)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(real_model.path)


@pytest.fixture(scope="module")
def reference(real_model):
    return llmri.capture(real_model, PROMPT, chat=True, max_new_tokens=6, signals="resid", reducer="neurons")


@pytest.mark.slow
def test_capture_takes_a_transformers_model_in_every_form(real_model, own_model, reference):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model.path)
    before = _state(own_model)
    kw = dict(chat=True, max_new_tokens=6, signals="resid", reducer="neurons")
    forms = {
        "model (tokenizer from name_or_path)": lambda: llmri.capture(own_model, PROMPT, **kw),
        "tokenizer=": lambda: llmri.capture(own_model, PROMPT, tokenizer=tok, **kw),
        "(model, tokenizer)": lambda: llmri.capture((own_model, tok), PROMPT, **kw),
        "llmri.wrap": lambda: llmri.capture(llmri.wrap(own_model, tok, name="mine"), PROMPT, **kw),
        "stream": lambda: llmri.Session.collect(llmri.stream(own_model, PROMPT, tokenizer=tok, **kw)),
    }
    for form, run in forms.items():
        s = run()
        assert s.tokens.ids.tolist() == reference.tokens.ids.tolist(), form
        np.testing.assert_array_equal(s.frames("resid"), reference.frames("resid"), err_msg=form)
        assert s.meta["model"]["fingerprint"] == real_model.fingerprint, form
        assert s.meta["model"]["architecture"] == "LlamaForCausalLM", form
        assert _state(own_model) == before, form  # not copied, moved, cast, hooked or switched
    assert llmri.wrap(own_model, tok, name="mine").name == "mine"
    w = llmri.wrap(own_model)
    assert w.model is own_model and w.path == real_model.path and w.name == os.path.basename(real_model.path)


@pytest.mark.slow
def test_the_fingerprint_is_computed_once_per_model_object(own_model, monkeypatch):
    import llmri.models as models

    llmri.wrap(own_model)  # computed here at the latest
    calls = []
    real = models.fingerprint
    monkeypatch.setattr(models, "fingerprint", lambda m: calls.append(1) or real(m))
    for _ in range(3):
        llmri.wrap(own_model)
    llmri.capture(own_model, PROMPT, max_new_tokens=1, signals="resid")
    assert calls == []


@pytest.mark.slow
def test_a_model_in_training_mode_is_captured_in_eval_mode_and_left_training(own_model, reference):
    own_model.train()
    try:
        flags = [m.training for m in own_model.modules()]
        s = llmri.capture(own_model, PROMPT, chat=True, max_new_tokens=6, signals="resid", reducer="neurons")
        assert s.tokens.ids.tolist() == reference.tokens.ids.tolist()  # no dropout
        assert [m.training for m in own_model.modules()] == flags
    finally:
        own_model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformer-lens", "nnsight"])
def test_wrapper_backends_share_the_weights_and_leave_the_model_alone(real_model, reference, backend):
    """The bridge / nnsight model wraps a copy of the module tree whose tensors are the user's:
    no weight exists twice, the user's modules keep their forwards, classes and attention."""
    import gc
    import weakref

    from transformers import AutoModelForCausalLM

    from llmri.capture.resolve import as_model, backend_for

    model = AutoModelForCausalLM.from_pretrained(real_model.path)
    before = _state(model)
    s = llmri.capture(model, PROMPT, chat=True, max_new_tokens=6, signals="resid", reducer="neurons", backend=backend)
    assert s.tokens.ids.tolist() == reference.tokens.ids.tolist()
    assert _state(model) == before
    loaded = as_model(model)
    _, cls = backend_for(loaded, backend)
    cap = cls(loaded, ["resid"])
    mine = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    theirs = [t for t in [*cap.torch_module().parameters()] if t.numel() > 1024]
    assert theirs and all(t.untyped_storage().data_ptr() in mine for t in theirs)
    assert cls(as_model(model), ["resid"]).torch_module() is cap.torch_module()  # built once per model object
    ref = weakref.ref(model)
    del model, loaded, cap, theirs
    gc.collect()
    assert ref() is None  # the wrapper kept for the model does not keep the model alive


def test_wrap_refusals(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ModelLoadError, match="no tokenizer given and none to load.*tokenizer="):
        llmri.wrap(model)
    with pytest.raises(ModelLoadError, match="no tokenizer given.*tokenizer="):
        llmri.capture(model, "hi", max_new_tokens=1)
    with pytest.raises(ModelLoadError, match="LlamaModel has no language-model head.*AutoModelForCausalLM"):
        llmri.wrap(AutoModel.from_config(cfg), tokenizer=object())
    with pytest.raises(ModelLoadError, match="needs a transformers PreTrainedModel"):
        llmri.wrap(object())
    with pytest.raises(llmri.CaptureError, match="two tokenizers"):
        llmri.capture((model, object()), "hi", tokenizer=object())
    with pytest.raises(llmri.CaptureError, match="a model spec brings its own tokenizer"):
        llmri.capture(str(tmp_path), "hi", tokenizer=object())


# -- dtype, device and accelerate's device_map -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_dir):
    """A tiny random Llama with the bundled tokenizer, saved with safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(default_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    where = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return where


def _generate(loaded, session, n):
    import torch

    k = session.tokens.role.count("prompt")
    with torch.inference_mode():
        ids = torch.from_numpy(session.tokens.ids[:k])[None].to(loaded.device)  # where the model is (cuda...)
        out = loaded.model.generate(ids, max_new_tokens=n, do_sample=False)
    return out[0, k:].tolist()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtypes_end_to_end_on_cpu(tiny_dir, dtype):
    """The model computes in its dtype; frames are stored float16, norms and statistics float32."""
    import torch

    loaded = llmri.load_model(tiny_dir, dtype=dtype)
    assert loaded.dtype == getattr(torch, dtype) and loaded.describe()["dtype"] == dtype
    s = llmri.capture(loaded, PROMPT, max_new_tokens=4, reducer="neurons")
    for sig in s.signals:
        assert s.frames(sig).dtype == np.float16 and np.isfinite(s.frames(sig)).all()
        assert all(a.dtype == np.float32 for a in s.stats(sig))
    assert s.tokens.ids[s.tokens.role.count("prompt") :].tolist() == _generate(loaded, s, 4)
    assert s.meta["model"]["dtype"] == dtype


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA"),
            ],
        ),
        pytest.param(
            "mps", marks=pytest.mark.skipif("not __import__('torch').backends.mps.is_available()", reason="no MPS")
        ),
    ],
)
def test_accelerator_devices(tiny_dir, device):
    """On the accelerator: the same greedy tokens as generate() there, frames on the CPU side."""
    loaded = llmri.load_model(tiny_dir, device=device, dtype="bfloat16" if device == "cuda" else "float32")
    assert loaded.device.type == device
    s = llmri.capture(loaded, PROMPT, max_new_tokens=4, reducer="neurons")
    assert s.tokens.ids[s.tokens.role.count("prompt") :].tolist() == _generate(loaded, s, 4)
    assert s.frames("resid").dtype == np.float16
    own = llmri.wrap(loaded.model, loaded.tokenizer)
    assert next(own.model.parameters()).device.type == device  # not moved


@pytest.mark.cuda
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA")
def test_a_model_split_over_cuda_and_the_cpu_is_captured_like_the_whole_one(tiny_dir):
    """accelerate's device_map over devices (the embedding and the first two layers on CUDA, the rest
    on the CPU, float32): the same tokens as the whole model on the CPU, and the same frames within
    float16 storage's rounding (2e-3 of each signal's largest |x|)."""
    whole = llmri.load_model(tiny_dir)
    ref = llmri.capture(whole, PROMPT, max_new_tokens=4, reducer="neurons")
    dm = {
        "model.embed_tokens": "cuda:0",
        "model.rotary_emb": "cuda:0",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    loaded = llmri.load_model(tiny_dir, device_map=dm)
    assert loaded.model.model.layers[0].mlp.up_proj.weight.device.type == "cuda"
    assert loaded.model.model.layers[2].mlp.up_proj.weight.device.type == "cpu"
    s = llmri.capture(loaded, PROMPT, max_new_tokens=4, reducer="neurons")
    assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
    for sig in ref.signals:
        want = ref.frames(sig).astype(np.float32)
        np.testing.assert_allclose(s.frames(sig).astype(np.float32), want, rtol=0, atol=2e-3 * np.abs(want).max())


def test_a_disk_offloaded_model_is_captured_like_the_whole_one(tiny_dir, tmp_path):
    """accelerate's device_map with layers on disk: load_model(device_map=...) and a model the user
    dispatched record the same frames and fingerprint as the model loaded whole."""
    from transformers import AutoModelForCausalLM

    whole = llmri.load_model(tiny_dir)
    ref = llmri.capture(whole, PROMPT, max_new_tokens=4, reducer="neurons")
    dm = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    loaded = llmri.load_model(tiny_dir, device_map=dm, offload_folder=str(tmp_path / "offload"))
    mine = AutoModelForCausalLM.from_pretrained(tiny_dir, device_map=dm, offload_folder=str(tmp_path / "mine"))
    assert loaded.model.hf_device_map["model.layers.1"] == "disk"
    assert loaded.model.model.layers[1].mlp.up_proj.weight.is_meta  # on disk, not in memory
    for model in (loaded, mine):
        s = llmri.capture(model, PROMPT, max_new_tokens=4, reducer="neurons")
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
        for sig in ref.signals:
            np.testing.assert_array_equal(s.frames(sig), ref.frames(sig))
        assert s.meta["model"]["fingerprint"] == whole.fingerprint  # read back from the offloaded weights
    with pytest.raises(ModelLoadError, match="device or device_map, not both"):
        llmri.load_model(tiny_dir, device="cpu", device_map=dm)
