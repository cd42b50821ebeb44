"""Many prompts into one store: :func:`capture_batches` (the per-worker function), :func:`capture_many`,
resuming (:func:`completed_keys`) and whole-session writes (:func:`write_session`)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import CaptureError
from ..frame import Frame
from ..settings import CaptureSettings, document, settings_from
from .batch import BatchCapturer
from .progress import study_bar
from .prompts import PromptRow, rows_of
from .stats import RunningStats, save_stats

if TYPE_CHECKING:
    from ..store.base import FrameStore

#: Rows read ahead and sorted by prompt length before they are cut into batches (in batches).
GROUP_WINDOW = 8


@dataclass
class StudyReport:
    """What a study run did: prompts ``captured`` now, ``skipped`` (complete in the store already),
    ``tokens`` generated, ``seconds`` of capture, the new ``session_ids`` and the running
    ``stats`` of what was captured now."""

    captured: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    session_ids: list[str] = field(default_factory=list)
    stats: RunningStats | None = None

    def merge(self, other: StudyReport) -> StudyReport:
        """This report and ``other`` (another worker's) as one."""
        stats = (
            self.stats
            if other.stats is None
            else (other.stats if self.stats is None else self.stats.merged(other.stats))
        )
        return StudyReport(
            self.captured + other.captured,
            self.skipped + other.skipped,
            self.tokens + other.tokens,
            max(self.seconds, other.seconds),
            self.session_ids + other.session_ids,
            stats,
        )


# -- the store side ----------------------------------------------------------------------------
def completed_keys(store: FrameStore) -> set[str]:
    """The study keys (:meth:`PromptRow.key`) of the store's complete sessions."""
    out: set[str] = set()
    for sid in store.session_ids():
        try:
            meta = store.session(sid).meta
        except Exception:  # noqa: BLE001 - a session that does not open is not complete
            continue
        study = meta.get("study")
        if isinstance(study, dict) and meta.get("status") == "complete" and study.get("key"):
            out.add(str(study["key"]))
    return out


class _DeferInterrupt:
    """Ctrl-C while a session is written waits until it is written (main thread only): an
    interrupted study keeps only whole sessions."""

    def __enter__(self) -> _DeferInterrupt:
        self.caught = False
        self.old: Any = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, *_: Any) -> None:
        self.caught = True

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.caught:
            raise KeyboardInterrupt


def write_session(store: FrameStore, meta: dict[str, Any], state: dict[str, Any], frames: list[Frame]) -> str:
    """Write one whole session (every frame, then ``complete``) and return its id."""
    with _DeferInterrupt():
        w = store.create_session(meta, state)
        try:
            for f in frames:
                w.append(f)
        except BaseException:
            w.close("interrupted")
            raise
        w.close("complete")
    return w.id


def _batches(
    cap: BatchCapturer,
    rows: Iterable[PromptRow],
    done: set[str],
    report: StudyReport,
    group: bool,
    on_skip: Callable[[PromptRow], None] | None = None,
) -> Iterator[list[PromptRow]]:
    """``rows`` not yet done, in batches; ``group``: each window of rows sorted by prompt length."""
    size = cap.batch_size
    window: list[PromptRow] = []

    def cut(w: list[PromptRow]) -> Iterator[list[PromptRow]]:
        if group and cap.batched:
            w = sorted(w, key=lambda r: len(cap.encode(r)[0]))
        for i in range(0, len(w), size):
            yield w[i : i + size]

    for row in rows:
        if cap.key(row) in done:
            report.skipped += 1
            if on_skip is not None:
                on_skip(row)
            continue
        window.append(row)
        if len(window) >= size * (GROUP_WINDOW if group else 1):
            yield from cut(window)
            window = []
    if window:
        yield from cut(window)


def capture_batches(
    model: Any,
    rows: Iterable[PromptRow],
    store: Any,
    settings: CaptureSettings | None = None,
    *,
    batch_size: int = 16,
    group: bool = True,
    on_session: Callable[[PromptRow, str, int], None] | None = None,
    on_skip: Callable[[PromptRow], None] | None = None,
    capturer: BatchCapturer | None = None,
    save: bool = True,
) -> StudyReport:
    """Capture ``rows`` (already read :class:`~llmri.study.PromptRow` values) into ``store``, one
    session per row, skipping the rows whose session is complete there already; the per-worker
    function (docs/studies.md). ``model``: a spec or a loaded model (ignored with ``capturer``, a
    :class:`BatchCapturer` a worker keeps between calls). ``on_session(row, session_id, tokens)``
    after each session is written, ``on_skip(row)`` for each row complete already. ``save``: store
    this call's running statistics as a part of its own (:func:`~llmri.study.save_stats`), rewritten
    after each batch. Returns the :class:`StudyReport` of this call, its running
    statistics included (merge several workers' with :meth:`StudyReport.merge`)."""
    from ..store import FrameStore, open_store

    cap = capturer or BatchCapturer(model, settings, batch_size=batch_size)
    fs: FrameStore = store if isinstance(store, FrameStore) else open_store(store, create=True)
    report = StudyReport(stats=RunningStats(list(cap.template.signals), len(cap.template.backend.layer_names)))
    done = completed_keys(fs)
    t0 = time.perf_counter()
    part = None
    for batch in _batches(cap, rows, done, report, group, on_skip):
        for row, meta, frames in cap.capture(batch):
            sid = write_session(fs, meta, cap.template.reducer_state, frames)
            n_new = sum(1 for f in frames if f.token.role == "generated")
            assert report.stats is not None
            report.stats.add_frames(frames)
            report.captured += 1
            report.tokens += n_new
            report.session_ids.append(sid)
            done.add(str(meta["study"]["key"]))
            if on_session is not None:
                on_session(row, sid, n_new)
        if save and report.stats is not None:
            part = save_stats(fs, report.stats, part)
    report.seconds = time.perf_counter() - t0
    return report


def capture_many(
    model: Any,
    prompts: Any,
    *,
    batch_size: int = 16,
    store: Any,
    settings: CaptureSettings | None = None,
    executor: Any = None,
    progress: bool | None = None,
    tokenizer: Any = None,
    group: bool = True,
    **options: Any,
) -> StudyReport:
    """Capture every prompt of ``prompts`` into ``store``, one session per prompt, in batches.

    ``prompts``: a JSONL file (``{"prompt": ...}`` or ``{"messages": [...]}``, an optional ``id``,
    any other keys kept as the session's ``meta["study"]["metadata"]``), a CSV file with a
    ``prompt`` column, a local Hugging Face ``datasets`` directory, or an iterable of strings or
    dicts. A file is checked whole first (one line naming the file and line for a bad row), then
    streamed. A prompt whose session is already complete in ``store`` is skipped (by its ``id``,
    else a hash of the prompt, the settings and the model), so a killed study resumes where it
    stopped. ``batch_size``: rows per forward (hf backend; interventions and other backends run one
    prompt at a time). ``group``: sort each window of ``8 * batch_size`` rows by prompt length so
    a batch wastes little padding. ``executor``: ``None`` (this process), ``"ray"`` or what
    :mod:`llmri.study`'s docstring says. ``progress``: a bar of prompts, tokens/s and ETA (``None``:
    in a notebook only). The running statistics of the study are stored with it
    (:func:`llmri.study.study_stats`). The capture options are :func:`llmri.capture`'s.
    """
    from ..store import FrameStore, open_store

    o = settings_from(settings, options)
    if isinstance(executor, str) and executor not in ("local", "ray"):  # a typo fails here, Ray or not
        raise CaptureError(f"executor must be None, 'local', 'ray' or a ray.util.ActorPool, got {executor!r:.60}")
    if executor not in (None, "local"):
        import importlib

        try:  # the many-workers part (docs/studies.md): "ray", or a Ray ActorPool the user built
            ray_executor = importlib.import_module(f"{__package__}.ray")
        except ImportError as exc:
            raise CaptureError(f"executor={executor!r:.60} is not available here ({exc})") from None
        result: StudyReport = ray_executor.capture_many_ray(
            model, prompts, executor=executor, batch_size=batch_size, store=store, settings=o, progress=progress,
            group=group,
        )  # fmt: skip
        return result
    rows = rows_of(prompts)
    total = _count(rows)
    cap = BatchCapturer(model, o, batch_size=batch_size, tokenizer=tokenizer)
    try:
        fs: FrameStore = store if isinstance(store, FrameStore) else open_store(store, create=True)
        bar = study_bar(progress, total)
        try:
            report = capture_batches(
                None, rows, fs, o, group=group, capturer=cap, on_session=bar.update if bar else None,
                on_skip=bar.skip if bar else None,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        return report
    finally:
        cap.close()


def _count(rows: Iterable[PromptRow]) -> int | None:
    count = getattr(rows, "count", None)
    return int(count) if isinstance(count, int) else None


document(capture_many)
