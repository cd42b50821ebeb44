"""SAE features in a capture (``saes=[...]``, ``sae_k``; docs/sae.md): the SAEs loaded and checked
against the model before generation, their record in the session meta, and each step's rows, one
encode per SAE per step on the model's device (:func:`llmri.readouts.sae.sae_readout`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .._errors import SAEError
from ..frame import FeatureRow
from ..readouts.sae import SAE, load_sae, sae_readout
from ..settings import check_sae_k
from .decode import Positions

_NAME = re.compile(r"^[\w.-]+$")


def load_saes(items: Sequence[SAE | str]) -> list[SAE]:
    """Each of ``items`` as an :class:`~llmri.readouts.sae.SAE` (a path is read by :func:`llmri.load_sae`);
    their names must be distinct and fit a store path (``sae/{name}/...``): else one line."""
    saes = [x if isinstance(x, SAE) else load_sae(x) for x in items]
    seen: set[str] = set()
    for sae in saes:
        if not _NAME.match(sae.name) or sae.name in (".", ".."):
            raise SAEError(f"SAE {sae.name!r:.80} ({sae.path}): a name of letters, digits, '_', '-' and '.' only")
        if sae.name in seen:
            raise SAEError(f"two SAEs named {sae.name} ({sae.path}): give one another name (load_sae(..., name=))")
        seen.add(sae.name)
    return saes


#: The module Gemma 2 / 3 add their MLP's output through; Gemma Scope's MLP SAEs read after it.
POST_NORM = "post_feedforward_layernorm"
_BEFORE_NORM = (".mlp", ".feed_forward", ".ffn")


def reads_after_post_norm(sae: SAE) -> bool | None:
    """Whether an ``mlp`` SAE reads the MLP's output after a post-feedforward norm (TransformerLens's
    ``hook_mlp_out``, which on Gemma is after it; a ``post_feedforward_layernorm`` hook), before it (a
    ``...mlp`` module path) or ``None``: its files name no hook (the user gave the site)."""
    hook = (sae.hook_name or "").strip()
    if sae.signal != "mlp" or not hook:
        return None
    hook = hook[: -len(".output")] if hook.endswith(".output") else hook
    return not hook.endswith(_BEFORE_NORM)


def check_mlp_site(sae: SAE, recorded: str | None, modules: set[str]) -> None:
    """Refuse (one line) an ``mlp`` SAE whose side of a post-feedforward norm is not the one the capture
    records: ``recorded`` is the module the backend records ``mlp`` at the SAE's layer from
    (``Backend.signal_modules``), ``modules`` the model's module names. A model without such norms
    has one MLP output, the same on both sides."""
    after = reads_after_post_norm(sae)
    if after is None or not recorded:
        return
    block = recorded.rsplit(".", 1)[0]
    at_norm = recorded.endswith(POST_NORM)
    if not at_norm and f"{block}.{POST_NORM}" not in modules:
        return  # no post-feedforward norm: one MLP output
    if after and not at_norm:
        pattern = re.sub(r"\.\d+$", ".{i}", block) + f".{POST_NORM}"
        raise SAEError(
            f"SAE {sae.name} ({sae.path}): reads the MLP's output after the post-feedforward norm "
            f"({sae.hook_name}), this capture records it before ({recorded}): capture with "
            f"hook_points={{'mlp': '{pattern}'}} (llmri capture --hook-points mlp={pattern})"
        )
    if not after and at_norm:
        raise SAEError(
            f"SAE {sae.name} ({sae.path}): reads the MLP's output before the post-feedforward norm "
            f"({sae.hook_name}), this capture records it after ({recorded}): capture without that hook point"
        )


#: The module whose output is a block's MLP input: Gemma 2 / 3's pre-feedforward norm, else the
#: post-attention norm (Llama, Qwen, Mistral...).
MLP_INPUT_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")


def check_transcoder_site(sae: SAE, recorded: str | None, modules: set[str]) -> None:
    """Refuse (one line) a transcoder unless the capture records ``mlp`` at its layer as the MLP's
    input (the output of the block's input norm of the MLP), naming the ``hook_points`` that do."""
    if recorded and recorded.endswith(MLP_INPUT_NORMS):
        return
    block = recorded.rsplit(".", 1)[0] if recorded else f"model.layers.{sae.layer}"
    norm = next((n for n in MLP_INPUT_NORMS if f"{block}.{n}" in modules), MLP_INPUT_NORMS[1])
    pattern = re.sub(r"\.\d+$", ".{i}", block) + f".{norm}"
    raise SAEError(
        f"transcoder {sae.name} ({sae.path}): reads layer {sae.layer}'s MLP input, this capture records the MLP's "
        f"output ({recorded}): capture with hook_points={{'mlp': '{pattern}'}}"
    )


def module_names(backend: Any) -> set[str]:
    """The names of the modules of the model ``backend`` runs (empty where it has no torch module)."""
    try:
        module = backend.torch_module()
    except Exception:  # noqa: BLE001 - a backend without one (llama.cpp): nothing to check
        return set()
    named = getattr(module, "named_modules", None)
    return {name for name, _ in named()} if callable(named) else set()


class SAEStep:
    """The SAEs of one capture: checked against the model when built, then one readout per step.

    ``saes``: loaded :class:`~llmri.readouts.sae.SAE` objects; each must read a recorded signal of a
    layer the model has, of its width (``check_model``), name the model (or none), and an ``mlp`` SAE
    the side of a post-feedforward norm the capture records (:func:`check_mlp_site`; docs/sae.md).
    """

    def __init__(
        self,
        saes: Sequence[SAE],
        k: int,
        *,
        d_model: int,
        n_layers: int,
        signals: Sequence[str],
        model_name: str | None,
        signal_modules: dict[str, list[str | None]] | None = None,
        modules: set[str] | None = None,
    ) -> None:
        self.saes = list(saes)
        self.k = check_sae_k(k)
        for sae in self.saes:
            sae.check_model(d_model, n_layers, tuple(signals))
            sae.check_model_name(model_name)
            paths = (signal_modules or {}).get("mlp") or []
            recorded = paths[sae.layer] if sae.layer is not None and sae.layer < len(paths) else None
            if sae.transcoder:
                check_transcoder_site(sae, recorded, modules or set())
            elif sae.signal == "mlp" and recorded is not None:
                check_mlp_site(sae, recorded, modules or set())

    def meta(self) -> dict[str, Any]:
        """``{"sae": {"k": k, "saes": [record, ...]}}`` (docs/FORMAT.md, "SAE features"), ``{}`` without SAEs."""
        if not self.saes:
            return {}
        return {"sae": {"k": self.k, "saes": [sae.record() for sae in self.saes]}}

    def rows(self, pos: Positions) -> list[dict[str, FeatureRow] | None]:
        """Each position's ``{sae name: FeatureRow}`` (``None`` without SAEs), from the step's full vectors."""
        n = len(pos.ids)
        if not self.saes:
            return [None] * n
        per = {name: rows.rows() for name, rows in sae_readout(self.saes, pos.acts, k=self.k).items()}
        return [{name: rows[j] for name, rows in per.items()} for j in range(n)]
