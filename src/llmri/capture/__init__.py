"""Capture: a prompt through a model, one forward per step, into frames.

``stream.py`` :func:`capture`, :func:`stream` and :class:`CaptureStream`; ``resolve.py`` what a
capture records (a model from a spec or an object, and its backend); ``framestream.py`` the
lifecycle every source of frames shares; ``decode.py`` the decode loop all backends share;
``frames.py`` a step's frames (tiles, norms, token statistics); ``readouts.py`` the readouts a
step computes (lens, attention); ``calibration.py`` the reducer's fit and colour scales;
``codec.py`` prompt encoding and decoding; ``messages.py`` the one check of chat messages;
``progressbar.py`` the notebook's progress bar.
"""

from ..settings import GenerationSettings
from .comparison import Comparison, compare
from .framestream import FrameStream
from .paired import patching, rerun
from .stream import CaptureStream, capture, stream

__all__ = [
    "CaptureStream",
    "Comparison",
    "compare",
    "FrameStream",
    "GenerationSettings",
    "capture",
    "patching",
    "rerun",
    "stream",
]
