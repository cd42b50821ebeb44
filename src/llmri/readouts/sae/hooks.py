"""Which llmri signal and layer an SAE reads, from the hook name its files give.

TransformerLens names (SAELens configs: ``blocks.L.hook_resid_post``...) and transformers module
paths (Gemma Scope 2's ``hf_hook_point_in``, sparsify's hookpoint directories: ``layers.L``,
``model.layers.L.mlp``...). llmri records three signals per block (``llmri.SIGNALS``): ``resid`` the
block's output, ``attn`` and ``mlp`` its sub-layers' outputs. ``resid_pre`` of block ``L`` is the
output of block ``L - 1``; block 0's is the embeddings, which llmri does not record.
"""

from __future__ import annotations

import re

_TL = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_attn_out|hook_mlp_out)$")
_TL_SIGNAL = {"hook_resid_post": "resid", "hook_resid_pre": "resid", "hook_attn_out": "attn", "hook_mlp_out": "mlp"}
_HF_BLOCK = r"^(?:[\w.]*\.)?(?:layers|h|blocks)\.(\d+)"
_HF = (
    (re.compile(_HF_BLOCK + r"(?:\.output)?$"), "resid"),
    (re.compile(_HF_BLOCK + r"\.(?:self_attn|attn|attention)(?:\.output)?$"), "attn"),
    # Gemma 2/3 add the MLP's output through a post-feedforward norm: Gemma Scope 2 reads it there
    (re.compile(_HF_BLOCK + r"\.(?:mlp|feed_forward|ffn|post_feedforward_layernorm)(?:\.output)?$"), "mlp"),
)
_EMBEDDINGS = re.compile(
    r"^(?:hook_embed|hook_pos_embed|blocks\.0\.hook_resid_pre|(?:[\w.]*\.)?embed_tokens(?:\.output)?)$"
)
_NOT_RECORDED = "is not a signal llmri records (a block's output, its attention output or its MLP output)"


def map_hook(hook: str) -> tuple[str, int]:
    """``(signal, layer)`` of a hook name; ``ValueError`` with the reason when llmri records no such vector.

    >>> map_hook("blocks.12.hook_resid_post"), map_hook("blocks.12.hook_resid_pre"), map_hook("model.layers.3.mlp")
    (('resid', 12), ('resid', 11), ('mlp', 3))
    """
    hook = hook.strip()
    if _EMBEDDINGS.match(hook):
        raise ValueError(f"hook {hook!r} reads the embeddings, which llmri does not record")
    m = _TL.match(hook)
    if m:
        layer, kind = int(m.group(1)), m.group(2)
        return _TL_SIGNAL[kind], layer - 1 if kind == "hook_resid_pre" else layer
    for pattern, signal in _HF:
        m = pattern.match(hook)
        if m:
            return signal, int(m.group(1))
    raise ValueError(f"hook {hook!r} {_NOT_RECORDED}")
