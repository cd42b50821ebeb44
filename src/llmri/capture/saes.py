"""SAE features in a capture (``saes=[...]``, ``sae_k``; docs/sae.md): the SAEs loaded and checked
against the model before generation, their record in the session meta, and each step's rows, one
encode per SAE per step on the model's device (:func:`llmri.readouts.sae.sae_readout`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
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
            if sae.signal == "mlp" and sae.layer is not None and sae.layer < len(paths):
                check_mlp_site(sae, paths[sae.layer], modules or set())

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


#: The bundled model's demo SAE: where it reads, its size, and the prompts besides the calibration text.
BUNDLED_LAYER, BUNDLED_D_SAE, BUNDLED_K = 15, 128, 8
BUNDLED_PROMPTS = (
    "The capital of France is Paris, and the capital of Japan is Tokyo.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Once upon a time, a little fox lived in a quiet forest near the river.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
    "Dear Sir or Madam, I am writing to ask about my order from last Tuesday.",
    "Water boils at 100 degrees Celsius at sea level; ice melts at 0 degrees.",
)


def captured_vectors(model: Any, texts: Sequence[str], layer: int) -> tuple[Any, list[str]]:
    """Each token's full ``resid`` vector at ``layer`` (float32 ``[n, d_model]``) and its text, from
    llmri captures of ``texts`` (raw, no generation) with the lossless ``neurons`` reducer in float32,
    leaving out each text's first token (its outsized norm would rule the training)."""
    import numpy as np

    from .stream import capture

    rows, pieces = [], []
    for text in texts:
        s = capture(model, text, chat=False, max_new_tokens=0, signals="resid", reducer="neurons",
                    frame_dtype="float32", progress=False)  # fmt: skip
        f = s.frames("resid")[:, layer].reshape(len(s), -1)
        rows.append(f[1:])
        pieces += list(s.tokens.text[1:])
    return np.concatenate(rows).astype(np.float32), pieces


def bundled_sae(model: Any = None, *, cache: bool = True) -> SAE:
    """A small TopK SAE of the bundled model (SmolLM2-135M-Instruct): 128 features, 8 active, on
    the ``resid`` of layer 15, trained by :func:`llmri.readouts.sae.train_sae` on llmri's captures of
    its calibration text and a few prompts, labelled by the tokens each feature fires on most.

    Trained on first use (seconds on a CPU) and kept in llmri's cache as a SAELens directory with its
    ``labels.json`` (:func:`llmri.load_sae` reads it); ``model``: the bundled model, loaded if ``None``."""
    import os
    import shutil
    import tempfile

    import torch

    from ..models import load_model
    from ..models.identity import cache_dir
    from ..readouts.sae.train import save_sae, top_token_labels, train_sae
    from .calibration import builtin_text, documents

    model = load_model() if model is None else model
    fp = str(getattr(model, "fingerprint", "") or "model")[:12]
    where = cache_dir() / "saes" / f"bundled-resid{BUNDLED_LAYER}-{BUNDLED_D_SAE}-k{BUNDLED_K}-{fp}-v1"
    if not (cache and (where / "cfg.json").is_file()):
        texts = ["\n\n".join(documents(builtin_text())), *BUNDLED_PROMPTS]
        x, pieces = captured_vectors(model, texts, BUNDLED_LAYER)
        sae = train_sae(x, d_sae=BUNDLED_D_SAE, k=BUNDLED_K, steps=400, lr=3e-3, layer=BUNDLED_LAYER, signal="resid",
                        name="smollm2-resid15", model_name=getattr(model, "name", None))  # fmt: skip
        labels = top_token_labels(sae.encode(torch.from_numpy(x)), pieces)
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=where.name + ".tmp-", dir=where.parent))
        try:
            save_sae(sae, tmp, labels=labels)
            if where.exists():
                shutil.rmtree(where)
            os.replace(tmp, where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_sae(where, name="smollm2-resid15", labels=where / "labels.json")
