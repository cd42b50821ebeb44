"""Studies: many prompts captured the same way into one store (docs/studies.md).

:func:`capture_many` reads a prompt file (JSONL, CSV, a local ``datasets`` directory) or an
iterable, checks it whole before anything is generated, and captures one session per prompt in
batches, skipping the prompts whose session is already complete in the store (resumable); the
running statistics of the study are stored with it (:func:`study_stats`).

``capture_many(..., executor=X)`` for any ``X`` but ``None`` / ``"local"`` returns
``llmri.study.ray.capture_many_ray(model, prompts, executor=X, batch_size=, store=, settings=,
progress=, group=)`` (a :class:`StudyReport`), ``settings`` a checked
:class:`~llmri.settings.CaptureSettings`.

The per-worker seam (for the Ray executor, ``executor="ray"``, in ``llmri.study.ray``)
---------------------------------------------------------------------------------------------
A worker holds a :class:`BatchCapturer` (the model loaded once, the settings checked once)::

    cap = BatchCapturer(model, settings, batch_size=16)        # once per worker (actor __init__)
    report = capture_batches(None, rows, store_url, capturer=cap)   # per task: a list of PromptRow
    # report: StudyReport (captured, skipped, tokens, seconds, session_ids, stats)

``rows`` are already-read :class:`PromptRow` values (:func:`read_prompts` streams a source;
:meth:`PromptRow.to_dict` / :func:`row_from_dict` carry them across processes). A row whose
session is complete in the store is skipped (its key: ``id:<id>``, or a hash of the prompt, the
settings and the model); a session is written whole when its row ends, so a killed worker leaves
no partial session (at most one being written). The driver merges the workers' reports
(:meth:`StudyReport.merge`) and stores the merged statistics with :func:`save_stats` (each worker
may also store its own part: parts are merged when read).
"""

from __future__ import annotations

from .batch import BatchCapturer
from .capture import GROUP_WINDOW, StudyReport, capture_batches, capture_many, completed_keys, write_session
from .prompts import PromptFileError, PromptRow, check_prompts, read_prompts, row_from_dict, rows_of
from .stats import RunningStats, save_stats, study_stats

__all__ = [
    "GROUP_WINDOW",
    "BatchCapturer",
    "PromptFileError",
    "PromptRow",
    "RunningStats",
    "StudyReport",
    "capture_batches",
    "capture_many",
    "check_prompts",
    "completed_keys",
    "read_prompts",
    "row_from_dict",
    "rows_of",
    "save_stats",
    "study_stats",
    "write_session",
]
