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


class SAEStep:
    """The SAEs of one capture: checked against the model when built, then one readout per step.

    ``saes``: loaded :class:`~llmri.readouts.sae.SAE` objects; each must read a recorded signal of a
    layer the model has, of its width (``check_model``), and name the model (or none).
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
    ) -> None:
        self.saes = list(saes)
        self.k = check_sae_k(k)
        for sae in self.saes:
            sae.check_model(d_model, n_layers, tuple(signals))
            sae.check_model_name(model_name)

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
