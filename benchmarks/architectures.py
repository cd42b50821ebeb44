"""A survey, not a timing: the hf backend on every causal-LM architecture transformers ships.

For each ``model_type`` of ``MODEL_FOR_CAUSAL_LM_MAPPING``: a tiny random model from a generic
config (d_model 64, 3 layers; a few families get the dimensions they need), captured through the
KV cache (5 prompt positions, then 2 single ones) and compared with the model's own full forward
(``output_hidden_states``). One line per architecture:

    OK      the blocks / sub-layers found, and whether resid and the logits equal HF's
    REFUSE  llmri's one-line refusal (a block that is not [batch, seq, d_model], no findable blocks)
    ERROR   the model's own forward failed on the generic config (or on cached decoding)
    BUILD   the generic config could not build the model (not a verdict on llmri)

    .venv/bin/python benchmarks/architectures.py [model_type ...]
"""

from __future__ import annotations

import signal
import sys
import warnings

MLA = dict(
    n_routed_experts=4,
    n_shared_experts=1,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    n_group=1,
    topk_group=1,
    head_dim=None,
)
BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=256,
    is_decoder=True,  # the BERT-style *ForCausalLM are causal only as decoders
    num_experts=4,
    num_local_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
)
EXTRA: dict[str, dict] = {
    **{
        n: MLA
        for n in (
            "deepseek_v2",
            "deepseek_v3",
            "deepseek_v32",
            "glm4_moe_lite",
            "glm_moe_dsa",
            "minicpm3",
            "sarvam_mla",
            "axk1",
            "axk2",
            "longcat_flash",
            "youtu",
        )
    },
    "falcon": dict(num_kv_heads=2, new_decoder_architecture=False, head_dim=None),
    "codegen": dict(rotary_dim=8, n_positions=256, head_dim=None),
    "gptj": dict(rotary_dim=8, n_positions=256),
    "mpt": dict(d_model=64, n_heads=4, n_layers=3, expansion_ratio=2, max_seq_len=256),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "falcon_mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "mamba2": dict(num_heads=8, head_dim=16, expand=2, state_size=16, n_groups=1),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, mamba_d_state=8, mamba_expand=2),
    "recurrent_gemma": dict(lru_width=64, block_types=["recurrent", "recurrent", "attention"], num_key_value_heads=1),
    "qwen3_next": dict(
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        shared_expert_intermediate_size=64,
    ),
    "llama4_text": dict(intermediate_size_mlp=128, interleave_moe_layer_step=1),
}


class _Loaded:
    def __init__(self, model):
        self.model, self.device = model, "cpu"


def _timeout(*_):
    raise TimeoutError("no answer in 60 s")


def survey(model_type: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmri import CaptureError
    from llmri.backends.hf import HFBackend

    kw = {**BASE, **EXTRA.get(model_type, {})}
    kw = {k: v for k, v in kw.items() if not (k == "head_dim" and v is None)}
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).eval()
    except Exception as exc:  # noqa: BLE001 - the generic config does not fit this family
        return f"BUILD   {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    ids = torch.randint(3, 250, (1, 7), generator=torch.Generator().manual_seed(0))
    try:
        cap = HFBackend(_Loaded(model))
        a = cap.step(ids[:, :5])
        b = cap.step(ids[:, 5:6], a.cache)
        c = cap.step(ids[:, 6:7], b.cache)
        with torch.inference_mode():
            ref = model(ids, output_hidden_states=True, use_cache=False)
    except CaptureError as exc:
        return f"REFUSE  {str(exc)[:160]}"
    except Exception as exc:  # noqa: BLE001 - the model's own forward
        return f"ERROR   {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    resid = torch.cat([a.acts["resid"], b.acts["resid"], c.acts["resid"]])
    hs = ref.hidden_states

    def rel(off: int) -> float:
        errs = [(resid[:, i] - hs[i + off][0]).abs().max() / hs[i + off][0].abs().max() for i in range(2)]
        return float(max(errs))

    match = "hs[l+1]" if rel(1) < 1e-3 else ("hs[l]" if rel(0) < 1e-3 else f"differs {min(rel(0), rel(1)):.0e}")
    lg = float((c.logits[-1] - ref.logits[0, -1]).abs().max() / ref.logits[0, -1].abs().max())
    mods = {s: sorted({p.rsplit(".", 1)[-1] if p else "-" for p in v}) for s, v in cap.signal_modules.items()}
    logits = "equal" if lg < 1e-3 else f"differ {lg:.0e}"
    return f"OK      {cap.layout.layers_path}: resid={match} logits={logits} {mods}"


def main(names: list[str]) -> None:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _timeout)
    for name in names or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        signal.alarm(60)
        try:
            line = survey(name)
        except TimeoutError as exc:
            line = f"BUILD   {exc}"
        finally:
            signal.alarm(0)
        print(f"{name:28s} {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
