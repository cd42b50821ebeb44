"""Capture backends: each one behind the :class:`~llmri.backends.base.Capture` interface."""

from . import hf, synthetic  # noqa: F401 - register
from .base import BACKENDS, Capture, Step

__all__ = ["BACKENDS", "Capture", "Step"]
