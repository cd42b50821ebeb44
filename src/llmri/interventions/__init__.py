"""Interventions: steering and ablation as small serialisable records (:mod:`.records`), and their
application as edits of a module's output over a step's absolute positions (:mod:`.apply`). This
package knows tensors and the backends' hook points, nothing of capture, the viewer or the CLI."""

from __future__ import annotations

from .apply import Plan, run_sources, selected
from .direction import METHODS, Direction, direction, load_direction
from .records import (
    POSITION_NAMES,
    Ablate,
    Intervention,
    Patch,
    Steer,
    ablate,
    as_records,
    from_dict,
    from_meta,
    patch,
    steer,
)
from .vector import Vector

__all__ = [
    "POSITION_NAMES",
    "Ablate",
    "Direction",
    "Intervention",
    "METHODS",
    "Patch",
    "Plan",
    "Steer",
    "Vector",
    "ablate",
    "as_records",
    "direction",
    "from_dict",
    "from_meta",
    "load_direction",
    "patch",
    "run_sources",
    "selected",
    "steer",
]
