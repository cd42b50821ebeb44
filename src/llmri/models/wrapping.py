"""``llmri.wrap``: a transformers causal LM the user already loaded, as the LoadedModel llmri captures.

Nothing of the user's is copied, moved or changed: not the model's modules, device, dtype or
training flag, nor the tokenizer. The weights' fingerprint is computed once per model object.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .._errors import ModelLoadError
from .identity import module_fingerprint
from .loading import LoadedModel


def is_transformers_model(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``PreTrainedModel`` (without importing transformers)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


def _source(model: Any) -> str:
    """Where the model was loaded from (``name_or_path``), or ``""``."""
    src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(src or "")


def _tokenizer_for(model: Any, source: str) -> Any:
    """The tokenizer saved beside a model loaded from a local directory; otherwise one clear line."""
    where = f" (it was loaded from {source!r})" if source else ""
    if not source or not os.path.isdir(source):
        raise ModelLoadError(
            f"{type(model).__name__}: no tokenizer given and none to load{where}: pass tokenizer= "
            "(llmri.wrap(model, tokenizer), llmri.capture(model, prompt, tokenizer=tokenizer) or (model, tokenizer))"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - no tokenizer files, or unreadable ones
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"{type(model).__name__}: cannot load a tokenizer from {source}: {first}: pass tokenizer="
        ) from exc


def wrap(model: Any, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """The model object llmri captures from, around a transformers causal LM you already loaded.

    Parameters
    ----------
    model:
        A transformers ``PreTrainedModel`` with a language-model head (``AutoModelForCausalLM``),
        on any device, in any dtype, ``device_map`` dispatched or not. It is used as it is: never
        copied, moved, cast or switched to eval mode (each forward runs in eval mode and puts the
        training flags back); hooks exist only during a forward.
    tokenizer:
        Its tokenizer; ``None`` loads the one saved in the model's ``name_or_path`` when that is a
        local directory. Used as it is (no pad token is added).
    name:
        The model's name in session metadata; default: the directory's name, else ``name_or_path``,
        else the class name.

    Returns
    -------
    LoadedModel
        What :func:`llmri.capture`, :func:`llmri.stream` and the backends take. Its fingerprint is
        computed once per model object (weights changed in place afterwards keep the first one).

    Raises
    ------
    ModelLoadError
        Not a transformers model, a model without a language-model head, or no tokenizer.
    """
    if not is_transformers_model(model):
        raise ModelLoadError(
            f"llmri.wrap needs a transformers PreTrainedModel (AutoModelForCausalLM), got {type(model).__name__}"
        )
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_head) or get_head() is None:
        raise ModelLoadError(
            f"{type(model).__name__} has no language-model head: load it with AutoModelForCausalLM "
            "(a base model gives hidden states, not next-token logits)"
        )
    source = _source(model)
    local = bool(source) and os.path.isdir(source)
    if tokenizer is None:
        tokenizer = _tokenizer_for(model, source)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or (Path(source).name if local else source) or type(model).__name__,
        path=source if local else "",
        fingerprint=module_fingerprint(model),
    )
