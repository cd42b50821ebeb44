"""The hf backend on every architecture family: tiny random models built from transformers
configs, saved with safetensors and loaded through ``llmri.load_model(dir)``, captured and checked
against the model's own ``output_hidden_states`` and ``generate()``.

Each model is built once per session (d_model 64, 3 layers, the bundled tokenizer's vocabulary).
``output_hidden_states`` runs on a second instance: in transformers 5 it may leave recording
hooks on the model it runs, and the capture's model must stay clean.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import llmri
from llmri import CaptureError

PROMPT = "The quick brown fox jumps over"
N_NEW = 5
#: Calibration text for the colour scales (the built-in one is long; scales do not matter here).
CAL = "One short text to measure the colour scales with, and nothing more. " * 4
D = 64
_BASE = dict(
    hidden_size=D,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
)
_MOE = dict(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
_NO_SPECIAL_IDS = dict(pad_token_id=None, bos_token_id=1, eos_token_id=2)  # defaults past our vocabulary

#: name -> (model_type, config beyond _BASE). ``head_dim=None``: the config derives its own.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": 4}),
    "mixtral": ("mixtral", _MOE),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "qwen3-moe": ("qwen3_moe", _MOE),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", {"sliding_window": 4}),
    "gemma3": ("gemma3_text", {"sliding_window": 4}),
    "phi": ("phi", {"partial_rotary_factor": 0.5}),
    "phi3": ("phi3", {}),
    "gpt2": ("gpt2", {"n_positions": 256}),
    "gpt-neox": ("gpt_neox", {}),
    "gpt-j": ("gptj", {"rotary_dim": 8, "n_positions": 256}),
    "bloom": ("bloom", {}),
    "falcon": ("falcon", {"num_kv_heads": 2, "new_decoder_architecture": False, "head_dim": None}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {"residual_multiplier": 0.5}),
    "stablelm": ("stablelm", {}),
    "starcoder2": ("starcoder2", {}),
    "cohere": ("cohere", {}),
    "mpt": ("mpt", {"d_model": D, "n_heads": 4, "n_layers": 3, "expansion_ratio": 2, "max_seq_len": 256}),
    "bigcode": ("gpt_bigcode", {"n_positions": 256}),
    "smollm3": ("smollm3", _NO_SPECIAL_IDS),
    "deepseek-v3": (
        "deepseek_v3",
        {
            **_MOE,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 16,
            "n_group": 1,
            "topk_group": 1,
            "head_dim": None,
        },
    ),
    "gpt-oss": ("gpt_oss", {**_MOE, "sliding_window": 4}),
    "olmoe": ("olmoe", _MOE),
    "exaone4": ("exaone4", {}),
    "phimoe": ("phimoe", _MOE),
    "glm4": ("glm4", _NO_SPECIAL_IDS),
    "opt": ("opt", {"ffn_dim": 128, "word_embed_proj_dim": D}),
    "mamba": ("mamba", {"state_size": 8, "expand": 2, "conv_kernel": 4, "time_step_rank": 8}),
    "mamba2": ("mamba2", {"num_heads": 8, "head_dim": 16, "expand": 2, "state_size": 16, "n_groups": 1}),
    "falcon-mamba": ("falcon_mamba", {"state_size": 8, "expand": 2, "conv_kernel": 4, "time_step_rank": 8}),
    "jamba": (
        "jamba",
        {
            **_MOE,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "mamba_d_state": 8,
            "mamba_dt_rank": 8,
            "mamba_expand": 2,
        },
    ),
    "recurrent-gemma": (
        "recurrent_gemma",
        {"lru_width": D, "block_types": ["recurrent", "recurrent", "attention"], "attention_window_size": 16},
    ),
    "qwen3-next": (
        "qwen3_next",
        {
            **_MOE,
            "layer_types": ["linear_attention", "full_attention", "linear_attention"],
            "linear_num_value_heads": 4,
            "linear_num_key_heads": 2,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "granitemoe": ("granitemoe", _MOE),
    "llama4-text": ("llama4_text", {**_MOE, "intermediate_size_mlp": 128, "interleave_moe_layer_step": 1}),
}
#: HF's ``hidden_states[k]`` for block ``l``: ``k = l + 1`` (entry 0 is the embeddings) except in
#: the Mamba family, whose entries start at block 0's output.
HS_OFFSET = {"mamba": 0, "mamba2": 0, "falcon-mamba": 0}
#: Blocks whose output is their input + attn + mlp. The others normalise the sub-layers' outputs
#: before adding them (the ``attn`` and ``mlp`` signals are the sub-layers' own outputs).
POST_NORM = {"gemma2", "gemma3", "olmo2", "exaone4", "glm4"}
#: Layers' token mixers, where they are not all attention.
MIXERS = {
    "mamba": ["backbone.layers.{i}.mixer"] * 3,
    "jamba": ["model.layers.0.mamba", "model.layers.1.self_attn", "model.layers.2.mamba"],
    "qwen3-next": ["model.layers.0.linear_attn", "model.layers.1.self_attn", "model.layers.2.linear_attn"],
    "recurrent-gemma": ["model.layers.{i}.temporal_block"] * 3,
}
NO_MLP = {"mamba", "mamba2", "falcon-mamba"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from llmri.models import gguf_model_dir
    from llmri.models.identity import default_gguf_path

    return AutoTokenizer.from_pretrained(gguf_model_dir(default_gguf_path()))


@dataclass
class Case:
    arch: str
    loaded: Any
    where: Any
    session: Any


_BUILT: dict[str, Case] = {}


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """Calibration scales of the tiny models go to a cache of this module's own."""
    old = os.environ.get("LLMRI_CACHE")
    os.environ["LLMRI_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LLMRI_CACHE", None)
    else:
        os.environ["LLMRI_CACHE"] = old


@pytest.fixture
def case(request, tmp_path_factory, tokenizer) -> Case:
    """One architecture, built, saved, loaded and captured once per session."""
    arch = request.param
    if arch not in _BUILT:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        model_type, extra = ARCHITECTURES[arch]
        kw = {**_BASE, "vocab_size": len(tokenizer), **extra}
        kw = {k: v for k, v in kw.items() if not (k == "head_dim" and v is None)}
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the tiny configs' own warnings
        try:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw))
            where = tmp_path_factory.mktemp(arch)
            model.save_pretrained(where)  # safetensors
            tokenizer.save_pretrained(where)
            loaded = llmri.load_model(where)
        finally:
            transformers.logging.set_verbosity(verbosity)
        session = llmri.capture(loaded, PROMPT, max_new_tokens=N_NEW, reducer="neurons", calibration=CAL)
        _BUILT[arch] = Case(arch, loaded, where, session)
    return _BUILT[arch]


def _frames(session, signal: str, n_layers: int) -> torch.Tensor:
    f = torch.from_numpy(session.frames(signal).astype(np.float32))
    return f.reshape(len(session), n_layers, -1)[:, :, :D]


def _reference(where):
    """A second instance of the saved model, for Hugging Face's own runs."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(where).eval()


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


archs = pytest.mark.parametrize("case", sorted(ARCHITECTURES), indirect=True)


@archs
def test_resid_equals_output_hidden_states(case):
    arch, loaded, where, s = case.arch, case.loaded, case.where, case.session
    ref = _reference(where)
    with torch.inference_mode():
        hs = ref(torch.from_numpy(s.tokens.ids)[None], output_hidden_states=True).hidden_states
    off = HS_OFFSET.get(arch, 1)
    resid = _frames(s, "resid", loaded.n_layers)
    assert len(hs) == loaded.n_layers + 1
    # frames are float16: its rounding (relative 2^-11) plus a small absolute slack
    for layer in range(loaded.n_layers - 1):
        torch.testing.assert_close(resid[:, layer], hs[layer + off][0], rtol=2e-3, atol=2e-3)
    # HF's last entry is after the final norm: the lens's norm of the last block's output
    head = llmri.backends.BACKENDS.get("hf")(loaded, ["resid"]).lens_head()
    with torch.inference_mode():
        torch.testing.assert_close(head.norm(resid[:, -1]), hs[-1][0], rtol=5e-3, atol=5e-3)


@archs
def test_greedy_tokens_equal_generate(case):
    where, s = case.where, case.session
    n_prompt = s.tokens.role.count("prompt")
    with torch.inference_mode():
        want = _reference(where).generate(
            torch.from_numpy(s.tokens.ids[:n_prompt])[None], max_new_tokens=N_NEW, do_sample=False
        )[0, n_prompt:]
    got = s.tokens.ids[n_prompt:].tolist()
    assert got and got == want.tolist()[: len(got)]
    assert len(got) == N_NEW or s.meta["stop_reason"] == "eos"


@archs
def test_attn_and_mlp_have_their_shapes_and_add_up(case):
    arch, loaded, s = case.arch, case.loaded, case.session
    want = ["resid", "attn"] if arch in NO_MLP else ["resid", "attn", "mlp"]
    assert s.signals == want  # signals=None: every signal the model has
    for sig in want:
        assert s.frames(sig).shape == (len(s), loaded.n_layers, 8, 8) and np.isfinite(s.frames(sig)).all()
        assert len(s.meta["signal_modules"][sig]) == loaded.n_layers
    assert s.meta["layers"] == s.meta["signal_modules"]["resid"]
    mixers = MIXERS.get(arch)
    if mixers:
        assert s.meta["signal_modules"]["attn"] == [m.format(i=i) for i, m in enumerate(mixers)]
    # unreduced, in float32: a block adds its sub-layers' outputs to its input
    cap = llmri.backends.BACKENDS.get("hf")(loaded)
    step = cap.step(torch.from_numpy(s.tokens.ids)[None])
    assert _hooks(loaded.model) == 0
    if arch in POST_NORM:
        return
    a = step.acts
    for layer in range(1, loaded.n_layers):
        delta = a["resid"][:, layer] - a["resid"][:, layer - 1]
        parts = a["attn"][:, layer] + (a["mlp"][:, layer] if "mlp" in a else 0)
        if arch == "granite":
            parts = parts * loaded.config.residual_multiplier
        torch.testing.assert_close(delta, parts, rtol=1e-4, atol=1e-5)


def _patterns(signal_modules: dict[str, list[str | None]]) -> dict[str, Any]:
    """``{signal: "path.{i}.module"}`` where every layer follows one pattern, else the list."""
    out: dict[str, Any] = {}
    for sig, paths in signal_modules.items():
        pats = {re.sub(rf"\.{i}(?=\.|$)", ".{i}", p, count=1) if p else None for i, p in enumerate(paths)}
        out[sig] = pats.pop() if len(pats) == 1 and None not in pats else list(paths)
    return out


@archs
def test_a_user_mapping_records_the_same(case):
    loaded, s = case.loaded, case.session
    hook_points = _patterns(s.meta["signal_modules"])
    again = llmri.capture(loaded, PROMPT, max_new_tokens=2, reducer="neurons", calibration=CAL, hook_points=hook_points)
    assert again.meta["signal_modules"] == s.meta["signal_modules"]
    for sig in s.signals:
        np.testing.assert_array_equal(again.frames(sig), s.frames(sig)[: len(again)])


# -- what a user can name, and what is refused -----------------------------------------------


@pytest.mark.parametrize("case", ["llama"], indirect=True)
def test_hook_points_as_written_in_the_docs(case):
    loaded, s = case.loaded, case.session
    mapping = {"resid": "model.layers.{i}", "attn": "model.layers.{i}.self_attn", "mlp": "model.layers.{i}.mlp"}
    again = llmri.capture(loaded, PROMPT, max_new_tokens=2, reducer="neurons", calibration=CAL, hook_points=mapping)
    np.testing.assert_array_equal(again.frames("mlp"), s.frames("mlp")[: len(again)])
    # one signal named elsewhere: the MLP's down projection is the MLP's output
    down = llmri.capture(
        loaded, PROMPT, max_new_tokens=2, reducer="neurons", calibration=CAL,
        hook_points={"mlp": "model.layers.{i}.mlp.down_proj"},
    )  # fmt: skip
    assert down.meta["signal_modules"]["mlp"][0] == "model.layers.0.mlp.down_proj"
    np.testing.assert_array_equal(down.frames("mlp"), s.frames("mlp")[: len(down)])
    with pytest.raises(CaptureError, match=r"no mapping for signal 'mlp'.*model\.layers\.0\.feed_forward"):
        llmri.capture(loaded, PROMPT, max_new_tokens=1, hook_points={"mlp": "model.layers.{i}.feed_forward"})
    with pytest.raises(CaptureError, match=r"needs \{i\}"):
        llmri.capture(loaded, PROMPT, max_new_tokens=1, hook_points={"mlp": "model.layers.0.mlp"})
    with pytest.raises(CaptureError, match="unknown signal 'ffn'"):
        llmri.capture(loaded, PROMPT, max_new_tokens=1, hook_points={"ffn": "model.layers.{i}.mlp"})
    with pytest.raises(CaptureError, match="does not take hook_points"):
        llmri.capture(loaded, PROMPT, max_new_tokens=1, backend="transformer-lens", hook_points=mapping)


@pytest.mark.parametrize("case", ["llama"], indirect=True)
def test_a_module_of_the_wrong_shape_is_an_error_naming_it(case):
    loaded = case.loaded
    with pytest.raises(CaptureError, match=r"model\.layers\.0\.mlp\.up_proj \(Linear\) returned Tensor\[1, \d+, 128\]"):
        llmri.capture(
            loaded, PROMPT, max_new_tokens=1, calibration=CAL, hook_points={"mlp": "model.layers.{i}.mlp.up_proj"}
        )
    assert _hooks(loaded.model) == 0


@pytest.mark.parametrize("case", ["mamba"], indirect=True)
def test_a_signal_no_layer_has_is_refused_when_asked_for(case):
    loaded = case.loaded
    with pytest.raises(CaptureError, match=r"MambaForCausalLM has no 'mlp' module in any layer.*hook_points"):
        llmri.capture(loaded, PROMPT, signals="resid,mlp", max_new_tokens=1)


@pytest.mark.parametrize("case", ["jamba"], indirect=True)
def test_a_layer_without_a_module_records_zeros(case):
    """A user mapping may leave a layer out (``None``): that layer's values are zeros."""
    loaded, s = case.loaded, case.session
    attn = ["model.layers.0.mamba", "model.layers.1.self_attn", None]
    got = llmri.capture(
        loaded, PROMPT, max_new_tokens=1, reducer="neurons", calibration=CAL, hook_points={"attn": attn}
    )
    assert got.meta["signal_modules"]["attn"] == attn
    frames = got.frames("attn")
    assert not frames[:, 2].any() and frames[:, 1].any()
    np.testing.assert_array_equal(frames[:, :2], s.frames("attn")[: len(got), :2])


def test_an_architecture_without_findable_blocks_is_refused_before_generation():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmri.backends.hf import HFBackend

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    model.model.stack = model.model.layers  # somewhere llmri does not look, and not num_hidden_layers long
    del model.model.layers
    model.model.stack.append(type(model.model.stack[0])(cfg, 1))

    class Loaded:
        def __init__(self):
            self.model, self.device = model, "cpu"

    refused = r"cannot find the decoder blocks of LlamaForCausalLM.*hook_points=\{'resid'"
    with pytest.raises(CaptureError, match=refused):
        HFBackend(Loaded())
    cap = HFBackend(Loaded(), hook_points={"resid": "model.stack.{i}"}, signals=["resid", "mlp"])
    assert cap.layer_names == ["model.stack.0", "model.stack.1", "model.stack.2"]
    assert cap.signal_modules["mlp"] == [f"model.stack.{i}.mlp" for i in range(3)]


# -- llmri inspect, and --hook-points on the command line --------------------------------------


@pytest.mark.parametrize("case", ["jamba"], indirect=True)
def test_inspect_prints_each_signals_module_per_layer(case, capsys):
    from llmri.cli import main

    assert main(["inspect", "--model", str(case.where)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"model: {case.where.name}  (JambaForCausalLM)"
    assert out[1] == "layers: 3  d_model: 64  backend: hf"
    rows = [line.split() for line in out[2:]]
    assert rows == [
        ["resid", "model.layers.{i}", "JambaMambaDecoderLayer", "layers", "0,", "2"],
        ["model.layers.{i}", "JambaAttentionDecoderLayer", "layers", "1"],
        ["attn", "model.layers.{i}.mamba", "JambaMambaMixer", "layers", "0,", "2"],
        ["model.layers.{i}.self_attn", "JambaAttention", "layers", "1"],
        ["mlp", "model.layers.{i}.feed_forward", "JambaMLP", "layers", "0,", "2"],
        ["model.layers.{i}.feed_forward", "JambaSparseMoeBlock", "layers", "1"],
    ]
    assert main(["inspect", "--model", str(case.where), "--hook-points", "mlp=model.layers.{i}.pre_ff_layernorm"]) == 0
    assert "mlp    model.layers.{i}.pre_ff_layernorm" in capsys.readouterr().out
    assert main(["inspect", "--model", str(case.where), "--hook-points", "mlp=model.layers.{i}.nope"]) == 1
    assert "no mapping for signal 'mlp'" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["mamba"], indirect=True)
def test_capture_command_takes_hook_points_and_every_signal_by_default(case, tmp_path, capsys):
    from llmri.cli import main

    store = str(tmp_path / "s.zarr")
    args = ["capture", "hi", "--model", str(case.where), "-o", store, "--raw", "--max-new-tokens", "1", "--quiet"]
    assert main(args) == 0  # no mlp in Mamba: the default records the signals it has
    assert main([*args, "--hook-points", "attn=backbone.layers.{i}.mixer.out_proj"]) == 0
    ids = capsys.readouterr().out.split()
    sessions = {s.id: s for s in llmri.open_store(store).sessions()}
    assert sessions[ids[0]].signals == ["resid", "attn"]
    assert sessions[ids[1]].meta["signal_modules"]["attn"][0] == "backbone.layers.0.mixer.out_proj"
    np.testing.assert_array_equal(sessions[ids[0]].frames("attn"), sessions[ids[1]].frames("attn"))
    with pytest.raises(SystemExit) as bad:  # argparse: SIGNAL=PATH expected
        main([*args, "--hook-points", "attn"])
    assert bad.value.code == 2 and "expected SIGNAL=PATH" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["falcon", "mamba", "jamba", "opt", "bloom", "llama4-text"], indirect=True)
def test_nnsight_finds_the_same_modules_and_records_the_same(case):
    """nnsight uses the same layout; Falcon writes attention into the MLP's output in place after
    the MLP returns, which a recorded reference (not a copy) would show as mlp = attn + mlp."""
    loaded, s = case.loaded, case.session
    got = llmri.capture(loaded, PROMPT, max_new_tokens=N_NEW, reducer="neurons", calibration=CAL, backend="nnsight")
    assert got.meta["signal_modules"] == s.meta["signal_modules"] and got.signals == s.signals
    assert got.tokens.ids.tolist() == s.tokens.ids.tolist()
    for sig in s.signals:
        np.testing.assert_allclose(got.frames(sig).astype(np.float32), s.frames(sig).astype(np.float32), atol=2e-3)
