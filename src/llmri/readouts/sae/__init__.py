"""Sparse autoencoders: read the formats in use (SAELens, Gemma Scope, Gemma Scope 2, sparsify) into one
:class:`SAE` and encode llmri's vectors into their features. torch loads when an SAE does."""

from .formats import SAE_FORMATS, detect, load_sae
from .hooks import map_hook
from .model import ARCHITECTURES, NORMALISATIONS, SAE
from .readout import SAE_TOP_K, SAERows, sae_readout

__all__ = [
    "ARCHITECTURES",
    "NORMALISATIONS",
    "SAE",
    "SAERows",
    "SAE_FORMATS",
    "SAE_TOP_K",
    "detect",
    "load_sae",
    "map_hook",
    "sae_readout",
]
