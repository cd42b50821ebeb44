"""Reducers: random projection, incremental PCA, raw neurons."""

from . import ipca, neurons, random_projection  # noqa: F401 - register
from .base import REDUCERS, Reducer, make_reducer, parse_tile

__all__ = ["REDUCERS", "Reducer", "make_reducer", "parse_tile"]
