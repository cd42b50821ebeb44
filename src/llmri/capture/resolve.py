"""What a capture records: a model object from what the user passed (a spec to load, a
transformers model, a wrapper), and the backend that records it."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._errors import CaptureError
from ..backends.base import BACKENDS, Backend
from ..models import LoadedModel, load_model
from ..models.wrapping import is_transformers_model, wrap


def is_spec(model: Any) -> bool:
    """Whether ``model`` names a model to load (``None`` for the bundled one, a path or an id)."""
    return model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")


def adapt(model: Any, tokenizer: Any = None) -> Any:
    """A model object the user built, as the object a capture records: a transformers model (or a
    ``(model, tokenizer)`` pair) wrapped by :func:`llmri.wrap`, a TransformerBridge or an nnsight
    model wrapped to record with its own backend; a model object llmri knows as it is."""
    from ..backends import nnsight as nnsight_backend
    from ..backends import transformer_lens as tl_backend

    if isinstance(model, tuple) and len(model) == 2 and is_transformers_model(model[0]):
        if tokenizer is not None and tokenizer is not model[1]:
            raise CaptureError("two tokenizers given: one in the (model, tokenizer) pair and tokenizer=")
        model, tokenizer = model
    if is_transformers_model(model):
        return wrap(model, tokenizer)
    if tokenizer is not None:
        if isinstance(model, LoadedModel):
            return dataclasses.replace(model, tokenizer=tokenizer)
        raise CaptureError(
            f"tokenizer= goes with a transformers model; this {type(model).__name__} brings its own tokenizer"
        )
    if tl_backend.is_bridge(model):
        return tl_backend.wrap(model)
    if nnsight_backend.is_nnsight(model):
        return nnsight_backend.wrap(model)
    return model


def as_model(model: Any, tokenizer: Any = None) -> Any:
    """The model object a capture records.

    Parameters
    ----------
    model:
        A spec for :func:`llmri.load_model` (``None`` for the bundled model, a directory, a
        ``.gguf`` file or a hub id); a transformers ``PreTrainedModel`` you loaded (or a
        ``(model, tokenizer)`` pair); a TransformerBridge or nnsight model you built; or a model
        object llmri already knows (:class:`~llmri.models.LoadedModel`, a synthetic model).
    tokenizer:
        The tokenizer of a transformers model (default: loaded from its ``name_or_path`` when
        that is a local directory), or one to use instead of a LoadedModel's; a spec, a bridge and
        an nnsight model bring their own.

    Returns
    -------
    object
        The loaded model for a spec (this can take minutes); a transformers model wrapped by
        :func:`llmri.wrap` (not copied, not moved); a TransformerBridge or nnsight model wrapped to
        record with its own backend; anything else as it is.
    """
    if is_spec(model):
        if tokenizer is not None:
            raise CaptureError("tokenizer= goes with a model object: a model spec brings its own tokenizer")
        return load_model(model)
    return adapt(model, tokenizer)


def backend_for(model: Any, backend: str | None) -> tuple[str, type[Backend]]:
    """The capture backend that records ``model``.

    Parameters
    ----------
    model:
        What :func:`as_model` returned (or ``None``, for a model still to be loaded).
    backend:
        A name from ``BACKENDS``; ``None`` picks the model's own backend (a wrapped or synthetic
        model), else ``"hf"``.

    Returns
    -------
    (str, type[Backend])
        The backend's name and class; nothing is built.

    Raises
    ------
    CaptureError
        An unknown name, or a model wrapped for another backend than the one named.
    """
    own = getattr(model, "llmri_backend", None)
    if backend is None:
        backend = own or "hf"
    elif own and backend != own and own in ("transformer-lens", "nnsight", "llama.cpp"):
        raise CaptureError(f"this model is wrapped for the {own!r} backend: it cannot record with {backend!r}")
    try:
        return backend, BACKENDS.get(backend)
    except KeyError as exc:
        raise CaptureError(str(exc.args[0])) from None
