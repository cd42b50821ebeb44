"""Errors llmri raises on purpose: each carries one line a user can act on."""

from __future__ import annotations


class LlmriError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits non-zero."""


class ModelLoadError(LlmriError):
    """A model spec could not be resolved or loaded."""


class CaptureError(LlmriError):
    """A capture could not start or continue (bad signal, bad settings, backend failure)."""


class ReducerError(LlmriError):
    """A reducer was misconfigured or given activations it cannot reduce."""


class SAEError(LlmriError):
    """A sparse autoencoder could not be loaded: the message names the file and what is wrong."""


class StoreError(LlmriError):
    """A store or session could not be opened, read or written."""


class MissingExtraError(LlmriError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (a message or an exception) as one line of at most ``limit`` characters.

    Runs of whitespace (newlines included) become one space; a longer line is cut and ends in
    ``...``. An exception whose message is empty gives its type name.
    """
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def require(module: str, extra: str):  # noqa: ANN201 - returns a module
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'llmri[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module} is not installed: pip install 'llmri[{extra}]' ({exc})") from exc
