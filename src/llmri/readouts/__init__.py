"""Readouts: what a token's full activations mean, computed before any reduction.

Pure functions over one step's tensors (the logit lens, attention per head) and over a
session's arrays (markers). They know tensors and numpy arrays, not models, stores or viewers.
"""

from .attention import ATTN_TOP_K, AttentionRows, attention_readout
from .lens import LENS_TOP_K, LensPending, LensRows, check_lens_head, fill_next, lens_error, logit_lens
from .markers import KINDS, THRESHOLDS, Marker, Thresholds, attention_jumps, decision_layers, find_markers, markers

__all__ = [
    "ATTN_TOP_K",
    "KINDS",
    "LENS_TOP_K",
    "THRESHOLDS",
    "AttentionRows",
    "LensPending",
    "LensRows",
    "Marker",
    "Thresholds",
    "attention_jumps",
    "attention_readout",
    "check_lens_head",
    "decision_layers",
    "fill_next",
    "find_markers",
    "lens_error",
    "logit_lens",
    "markers",
]
