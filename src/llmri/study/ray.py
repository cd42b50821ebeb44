"""``capture_many(..., executor="ray")``: a study fanned out over Ray actors (the ``ray`` extra).

One :class:`StudyWorker` actor per worker holds the model once (a
:class:`~llmri.study.BatchCapturer`) and takes batches of prompt rows, writing each session to
the shared store itself (a URL every worker reaches: a local path on one machine, ``s3://...`` on a
cluster). The driver reads the prompts as it goes (at most two batches per worker in flight),
merges the workers' reports and stores the study's statistics. A worker that dies (its node lost,
``ray.kill``) fails only its batch, which goes to another worker: rows whose session is already
complete in the store are skipped there (:func:`~llmri.study.completed_keys`), so every prompt is
captured once. docs/storage.md says how the same call runs on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._errors import CaptureError, require
from ..settings import DEFAULTS, CaptureSettings
from .capture import StudyReport, capture_batches
from .prompts import PromptRow, row_from_dict, rows_of

#: How often one batch may be sent again after the worker running it died.
MAX_RETRIES = 3


class StudyWorker:
    """The body of a Ray actor: the model loaded once, then :meth:`capture` per batch.

    ``model``: a spec (``None`` for the bundled model, a directory, a hub id) loaded in the worker,
    or a model object Ray can send. ``store``: the store's URL or path (every worker opens it).
    """

    def __init__(
        self, model: Any, settings: CaptureSettings | None, batch_size: int, store: str, group: bool = True
    ) -> None:
        from .batch import BatchCapturer

        self.capturer = BatchCapturer(model, settings, batch_size=batch_size)
        self.store, self.group = store, group

    def capture(self, rows: list[dict[str, Any]]) -> StudyReport:
        """Capture ``rows`` (:meth:`PromptRow.to_dict` values) into the store; this batch's report."""
        return capture_batches(
            None, [row_from_dict(r) for r in rows], self.store, capturer=self.capturer, group=self.group
        )

    def ping(self) -> bool:
        return True


def make_workers(
    n: int,
    model: Any,
    *,
    store: Any,
    settings: CaptureSettings | None = None,
    batch_size: int = 16,
    group: bool = True,
    **actor_options: Any,
) -> list[Any]:
    """``n`` :class:`StudyWorker` actors (handles), each loading ``model``; ``actor_options`` go
    to Ray (``num_cpus=1`` by default; ``num_gpus=1`` puts each on its own GPU). Give them to
    ``capture_many(executor=ray.util.ActorPool(workers))``."""
    ray = require("ray", "ray")
    actor_options.setdefault("num_cpus", 1)
    cls = ray.remote(StudyWorker).options(**actor_options)
    return [cls.remote(model, settings, batch_size, str(store), group) for _ in range(n)]


def _chunks(rows: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        assert isinstance(row, PromptRow)
        batch.append(row.to_dict())
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def capture_many_ray(
    model: Any,
    prompts: Any,
    *,
    executor: Any,
    batch_size: int,
    store: Any,
    settings: CaptureSettings,
    progress: bool | None = None,
    group: bool = True,
) -> StudyReport:
    """:func:`llmri.capture_many` on Ray. ``executor``: ``"ray"`` (connects with ``ray.init()``
    when not connected, which reads ``RAY_ADDRESS``; one actor per CPU of the cluster, at most one
    per batch) or a ``ray.util.ActorPool`` of :func:`make_workers` actors."""
    ray = require("ray", "ray")
    from ray.util import ActorPool

    from ..store import FrameStore, open_store
    from .stats import save_stats

    if isinstance(store, FrameStore):
        url = getattr(store, "url", None)
        if url is None:
            raise CaptureError("executor='ray' needs a store every worker can open: give its path or URL")
        store = url
    fs = open_store(store, create=True)  # made once here, before the workers race to make it
    rows = rows_of(prompts)
    if isinstance(executor, ActorPool):
        if settings != DEFAULTS:
            raise CaptureError(
                "with an ActorPool the workers capture with their own settings: give the capture options "
                "to make_workers(settings=...), not to capture_many"
            )
        actors, owned = [], []
        while executor.has_free():  # public API: the pool's idle actors, given back at the end
            actors.append(executor.pop_idle())
        if not actors:
            raise CaptureError("the ActorPool given as executor has no idle actor")
    elif executor == "ray":
        if not ray.is_initialized():
            ray.init()
        n = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = getattr(rows, "count", None)
        if isinstance(count, int):
            n = max(1, min(n, -(-count // batch_size)))
        actors = owned = make_workers(n, model, store=store, settings=settings, batch_size=batch_size, group=group)
    else:
        raise CaptureError(f"executor must be None, 'local', 'ray' or a ray.util.ActorPool, got {executor!r:.60}")
    try:
        report, alive = _run(ray, actors, _chunks(rows, batch_size))
    finally:
        for actor in owned:
            ray.kill(actor)
    if isinstance(executor, ActorPool):
        for actor in alive:
            executor.push(actor)
    if report.stats is not None and report.captured:
        save_stats(fs, report.stats)
    return report


def _run(ray: Any, actors: list[Any], batches: Iterator[list[dict[str, Any]]]) -> tuple[StudyReport, list[Any]]:
    """Keep every worker busy with one batch; a batch whose worker died goes to another (the dead
    worker gets no more). Returns the merged report and the workers still alive."""
    from ray.exceptions import RayActorError

    report, free = StudyReport(), list(actors)
    retry: list[tuple[list[dict[str, Any]], int]] = []
    running: dict[Any, tuple[Any, list[dict[str, Any]], int]] = {}  # task -> (worker, batch, tries)
    exhausted = False
    while True:
        while free and (retry or not exhausted):
            if retry:
                batch, tries = retry.pop()
            else:
                nxt = next(batches, None)
                if nxt is None:
                    exhausted = True
                    break
                batch, tries = nxt, 0
            actor = free.pop()
            running[actor.capture.remote(batch)] = (actor, batch, tries)
        if not running:
            if retry:
                raise CaptureError("every Ray worker of the study died: rerun it to capture the rest")
            return report, free
        (task,), _ = ray.wait(list(running), num_returns=1)
        actor, batch, tries = running.pop(task)
        try:
            part = ray.get(task)
        except RayActorError:
            if tries >= MAX_RETRIES:
                raise CaptureError(f"a batch of the study failed {tries + 1} times on dying workers") from None
            retry.append((batch, tries + 1))
            continue
        free.append(actor)
        report = report.merge(part)
