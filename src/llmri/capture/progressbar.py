"""A capture's progress bar (tqdm): tokens and tokens/s, in a notebook or when asked.

``llmri.capture(..., progress=None)`` shows a bar only inside a Jupyter kernel (tqdm's notebook bar),
and only once a capture has run for :data:`DELAY` seconds, so short captures print nothing;
``progress=True`` shows one anywhere (a terminal bar on stderr outside a notebook), ``False`` never.
The bar counts frames as they are appended; tqdm redraws at most every ``mininterval``, so the cost per
token is one counter update.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..frame import Frame

#: Seconds a capture runs before its bar appears (tqdm's ``delay``).
DELAY = 1.0


def wanted(progress: bool | None) -> bool:
    """Whether to show a bar: ``progress`` if given, else whether this runs in a Jupyter kernel."""
    if progress is not None:
        return bool(progress)
    return in_notebook()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook 7, VS Code, nbclient); not in a script or a
    terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Tracked:
    """``stream`` (a :class:`~llmri.FrameStream`) as a frame source that moves a bar per frame: what
    :meth:`llmri.Session.collect` takes. ``total`` is the most frames it can yield (the bar ends at the
    count reached when the answer ends sooner)."""

    def __init__(self, stream: Any, total: int | None, desc: str = "capture") -> None:
        self.stream = stream
        self.total = total
        self.desc = desc

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.stream.meta
        return meta

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = self.stream.reducer_state
        return state

    @property
    def session_id(self) -> str | None:
        sid: str | None = self.stream.session_id
        return sid

    def __iter__(self) -> Iterator[Frame]:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, desc=self.desc, unit="tok", delay=DELAY, leave=True, dynamic_ncols=True)
        try:
            for frame in self.stream:
                bar.update(1)
                yield frame
            if bar.total is not None and bar.n < bar.total:
                bar.total = bar.n  # ended before max_new_tokens (eos, a stop string): a full bar
                bar.refresh()
        finally:
            bar.close()


def tracked(stream: Any, progress: bool | None, total: int | None, desc: str = "capture") -> Any:
    """``stream`` itself, or wrapped in a :class:`Tracked` bar when :func:`wanted`."""
    if not wanted(progress):
        return stream
    from .._errors import require

    require("tqdm", "notebook")
    return Tracked(stream, total, desc)
