"""The viewer inside a notebook: ``llmri.show(x)`` and ``session.show()`` (extra ``[notebook]``).

The widget (:class:`~llmri.notebook.widget.Viewer`, an anywidget) renders ``llmri view``'s own client in
an iframe of the output cell and answers its requests through the viewer's ASGI app in the kernel, over
the notebook's comm: no server, no port (docs/notebook.md). Importing this package is cheap: anywidget,
ipywidgets and the viewer load when something is shown.
"""

from __future__ import annotations

import sys
from typing import Any

from ..capture.progressbar import in_notebook
from .sources import NotebookError, outside_message

__all__ = ["NotebookError", "Viewer", "in_notebook", "show"]


def show(source: Any, *, session: str | None = None, t: int = 0, height: int = 640) -> Any:
    """Show ``source`` in the viewer, in this notebook's output.

    ``source``: a session (``llmri.capture(...)``, a store's session), a store, a store's path or URL,
    ``llmri.stream(...)`` (run on a background thread and shown as its frames come; the call returns
    at once), or a list or ``{label: ...}`` mapping of them (compare across them in the viewer).
    ``session``: the id to open first in a store; ``t``: the frame; ``height``: pixels.

    Returns the :class:`~llmri.notebook.widget.Viewer` widget (its ``t`` follows the viewer; ``stop()``,
    ``wait()`` for a stream), already displayed. Outside a notebook, prints one line saying what to run instead and
    returns None.
    """
    if not in_notebook():
        print(outside_message(source), file=sys.stderr)
        return None
    from .._errors import require

    require("anywidget", "notebook")
    from IPython.display import display

    from .widget import Viewer

    widget = Viewer(source, session=session, t=t, height=height)
    display(widget)
    return _Shown(widget)


class _Shown:
    """What :func:`show` returns: the displayed widget's handle, without a display of its own (a cell
    ending in ``llmri.show(x)`` shows one viewer, not two)."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget

    def __getattr__(self, name: str) -> Any:
        return getattr(self.widget, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "widget":
            object.__setattr__(self, name, value)
        else:
            setattr(self.widget, name, value)

    def __repr__(self) -> str:
        return repr(self.widget)

    def _ipython_display_(self) -> None:
        """Already displayed: as a cell's last value it shows nothing more."""


def __getattr__(name: str) -> Any:
    if name == "Viewer":
        from .._errors import require

        require("anywidget", "notebook")
        from .widget import Viewer

        return Viewer
    raise AttributeError(name)
