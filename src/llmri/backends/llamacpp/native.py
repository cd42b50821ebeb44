"""The eval callback in C (``evalcb.c``): compiled on first use with the system's C compiler, else none.

llama.cpp calls its eval callback at every node of every graph (~1,100 per decode of the bundled
model); through ctypes each call is a trip into Python. ``evalcb.c`` answers them in C, with the
same checks and copies as :class:`~llmri.backends.llamacpp.recorder.Recorder`. It is compiled once
per source, compiler and platform into llmri's cache (``$LLMRI_CACHE/native``) with ``$CC`` or
``cc`` / ``gcc`` (``-O2 -shared -fPIC``, no shell, no link flags: ``ggml_backend_tensor_get``'s
address is passed in). Without a compiler, or where the compile fails, :func:`library` returns
``None`` and logs one debug line: the Python callback runs instead (llama-cpp-python often comes as
a prebuilt wheel, on machines with no compiler). ``LLMRI_LLAMACPP_NATIVE=0`` forces the Python one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import CaptureError
from .ggml import GGML_TYPE_NAMES, Ggml
from .recorder import Recorder

log = logging.getLogger("llmri.llamacpp")

SOURCE = Path(__file__).with_name("evalcb.c")
FLAGS = ("-O2", "-shared", "-fPIC")
ABI = 1
MODE_IDLE, MODE_NATIVE, MODE_PYTHON = 0, 1, 2
ERR_NONE, ERR_SHAPE, ERR_TWICE, ERR_UNKNOWN, ERR_BOUNDS = 0, 1, 2, 3, 4
NAME_LEN = 64  # GGML_MAX_NAME


class _Slot(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * NAME_LEN), ("buf", ctypes.c_int32), ("layer", ctypes.c_int32)]


class _State(ctypes.Structure):
    """``struct llmri_state`` of evalcb.c, field for field (its size is checked against the library's)."""

    _fields_ = [
        ("tensor_get", ctypes.c_void_p),
        ("python", ctypes.c_void_p),
        ("name_offset", ctypes.c_int64),
        ("mode", ctypes.c_int32),
        ("n_slots", ctypes.c_int32),
        ("slots", ctypes.c_void_p),
        ("table", ctypes.c_void_p),
        ("mask", ctypes.c_int64),
        ("bases", ctypes.c_void_p),
        ("layers", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("scratch", ctypes.c_void_p),
        ("scratch_rows", ctypes.c_int64),
        ("row0", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("seen", ctypes.c_void_p),
        ("n_seen", ctypes.c_int32),
        ("error", ctypes.c_int32),
        ("error_slot", ctypes.c_int32),
        ("error_type", ctypes.c_int32),
        ("error_ne", ctypes.c_int64 * 4),
    ]


def enabled() -> bool:
    """Whether the native callback may be used (``LLMRI_LLAMACPP_NATIVE=0`` says no)."""
    return os.environ.get("LLMRI_LLAMACPP_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> list[str] | None:
    """``$CC`` (split as a command line, e.g. ``ccache gcc``) or ``cc`` / ``gcc`` on the PATH; ``None`` without."""
    env = os.environ.get("CC", "").strip()
    cmd = shlex.split(env) if env else [next((c for c in ("cc", "gcc") if shutil.which(c)), "cc")]
    exe = shutil.which(cmd[0]) if cmd else None
    return [exe, *cmd[1:]] if exe else None


def _key(cc: list[str], source: bytes) -> str:
    """The cached library's name: a hash of the source, the compiler (its resolved file, size and
    mtime, and its arguments), the flags and the platform."""
    real = Path(cc[0]).resolve()
    st = real.stat()
    parts = [source, str(real).encode(), f"{st.st_size}:{st.st_mtime_ns}".encode(), " ".join(cc[1:]).encode()]
    parts += [" ".join(FLAGS).encode(), sys.platform.encode(), platform.machine().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _private_dir(path: Path) -> bool:
    """Made 0700 if new; usable only if it is ours and no one else can write into it (we load code from it)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    return (
        stat.S_ISDIR(st.st_mode)
        and (not hasattr(os, "getuid") or st.st_uid == os.getuid())
        and not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    )


def build(cache: Path | None = None) -> Path | None:
    """The compiled library in ``cache`` (default ``cache_dir() / "native"``), compiled if not there
    yet (to a temporary file, renamed into place); ``None`` where it cannot be (logged at debug)."""
    from ...models.identity import cache_dir

    cc = compiler()
    if cc is None:
        log.debug(
            "llama.cpp: no C compiler (CC=%r, no cc or gcc on PATH): using the Python eval callback",
            os.environ.get("CC"),
        )
        return None
    try:
        source = SOURCE.read_bytes()
        where = cache if cache is not None else cache_dir() / "native"
        if not _private_dir(where):
            log.debug("llama.cpp: %s is not a private directory: using the Python eval callback", where)
            return None
        suffix = ".dll" if sys.platform == "win32" else ".so"
        target = where / f"llmri-evalcb-{_key(cc, source)}{suffix}"
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".evalcb-", suffix=suffix)
        os.close(fd)
        try:
            r = subprocess.run([*cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                log.debug(
                    "llama.cpp: compiling %s failed (%s): using the Python eval callback: %s",
                    SOURCE.name,
                    r.returncode,
                    (r.stderr or r.stdout).strip()[-500:],
                )
                return None
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("llama.cpp: cannot build the native eval callback (%s): using the Python one", exc)
        return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The native callback's library, built and loaded once per process; ``None`` where unavailable."""
    path = build()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        lib.llmri_abi.restype = ctypes.c_int64
        abi = int(lib.llmri_abi())
    except (OSError, AttributeError) as exc:
        log.debug("llama.cpp: cannot load %s (%s): using the Python eval callback", path, exc)
        return None
    want = ABI * 1000000 + ctypes.sizeof(_State) * 1000 + ctypes.sizeof(_Slot)
    if abi != want:
        log.debug("llama.cpp: %s lays its state out otherwise (%s, expected %s): using Python", path, abi, want)
        return None
    lib.llmri_index.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64]
    lib.llmri_index.restype = None
    return lib


def _reimplemented(rec: Recorder) -> bool:
    """Whether ``rec`` does what evalcb.c does: a plain Recorder whose callback methods nobody replaced."""
    cls = type(rec)
    return cls is Recorder and all(
        getattr(cls, m) is _ORIGINAL[m] and m not in vars(rec) for m in ("wants", "computed", "fail")
    )


_ORIGINAL = {m: getattr(Recorder, m) for m in ("wants", "computed", "fail")}


class NativeEval:
    """One context's callback state (``user_data``): bound to a recorder by :meth:`bind`, loaded from it
    before each decode (:meth:`load`) and stored back after (:meth:`store`), unbound by :meth:`unbind`.

    A recorder evalcb.c does not reimplement (a subclass, or one whose methods were replaced, as
    tests do) runs through ``python`` (the context's ctypes callback) instead.
    """

    def __init__(self, lib: ctypes.CDLL, ggml: Ggml, python: Any) -> None:
        self._lib = lib
        self.state = _State()
        self.state.tensor_get = ctypes.cast(ggml.tensor_get, ctypes.c_void_p).value
        self.state.python = ctypes.cast(python, ctypes.c_void_p).value
        self.state.name_offset = ggml.name_offset
        self.user_data = ctypes.addressof(self.state)
        self.function: int = ctypes.cast(lib.llmri_eval, ctypes.c_void_p).value or 0  # llmri_eval's address
        self.native = False  # bound to a recorder in MODE_NATIVE
        self._plan: tuple[Any, ...] = ()  # the slots' key, names, and the arrays the state points into
        self._keep: list[Any] = []  # the arrays of the bound recorder the state points into
        self._scratch = np.empty(0, dtype=np.float32)

    def _index(self, slots: dict[bytes, tuple[int, int]]) -> bool:
        """Lay ``slots`` out for C (cached: a capture's steps share one slots dict); False where a name
        cannot be a ggml tensor's (too long, or with a NUL), which C would compare otherwise than Python."""
        key = tuple(slots.items())
        if self._plan and self._plan[0] == key:
            return True
        names = list(slots)
        if any(len(n) >= NAME_LEN or b"\0" in n for n in names):
            return False
        arr = (_Slot * max(1, len(names)))()
        for k, (name, (buf, layer)) in enumerate(slots.items()):
            arr[k].name, arr[k].buf, arr[k].layer = name, buf, layer
        size = 1 << max(4, (4 * len(names)).bit_length())
        table = np.empty(size, dtype=np.int32)
        self._lib.llmri_index(ctypes.addressof(arr), len(names), table.ctypes.data, size - 1)
        seen = np.zeros(max(1, len(names)), dtype=np.uint8)
        self._plan = (key, names, arr, table, seen)
        s = self.state
        s.n_slots, s.slots, s.table, s.mask = len(names), ctypes.addressof(arr), table.ctypes.data, size - 1
        s.seen = seen.ctypes.data
        return True

    def bind(self, rec: Recorder) -> None:
        """Point the state at ``rec``'s buffers (MODE_NATIVE), or hand calls to Python (MODE_PYTHON)."""
        s = self.state
        if not (_reimplemented(rec) and self._index(rec.slots)):
            self.native = False
            s.mode = MODE_PYTHON
            return
        n = rec.bufs[0].shape[0] if rec.bufs else 0
        bases = np.array(rec.bases, dtype=np.uintp)
        layers = np.array(rec.layers, dtype=np.int64)
        self._keep = [rec.bufs, bases, layers]
        s.bases, s.layers, s.n, s.d = bases.ctypes.data, layers.ctypes.data, n, rec.d
        self.native = True
        s.mode = MODE_NATIVE

    def load(self, rec: Recorder) -> None:
        """Before a decode: the recorder's rows, seen set and error into the state."""
        s = self.state
        _, names, _, _, seen = self._plan
        s.row0, s.rows = rec.row0, rec.rows
        if rec.seen:
            seen[:] = [nm in rec.seen for nm in names]
        else:
            seen[:] = 0
        s.n_seen = len(rec.seen)
        s.error = ERR_NONE if rec.error is None else -1  # an error from before: decline everything, as Python
        if rec.rows > 1 and rec.rows > self._scratch.shape[0] // max(1, rec.d):
            self._scratch = np.empty(rec.rows * rec.d, dtype=np.float32)
        s.scratch, s.scratch_rows = self._scratch.ctypes.data, self._scratch.shape[0] // max(1, rec.d)

    def store(self, rec: Recorder) -> None:
        """After a decode: the tensors seen and the first error back into the recorder."""
        s = self.state
        _, names, _, _, seen = self._plan
        if s.n_seen == len(names):
            rec.seen = set(rec.slots)
        elif s.n_seen:
            rec.seen = {nm for nm, f in zip(names, seen.tolist(), strict=True) if f}
        else:
            rec.seen = set()
        if s.error > 0 and rec.error is None:
            rec.fail(self._error(rec, s))

    def _error(self, rec: Recorder, s: _State) -> BaseException:
        """The exception Recorder.computed would have raised (the same messages)."""
        _, names, _, _, _ = self._plan
        name = names[s.error_slot].decode() if s.error_slot >= 0 else "?"
        if s.error == ERR_SHAPE:
            what = GGML_TYPE_NAMES.get(s.error_type, f"type {s.error_type}")
            return CaptureError(
                f"llama.cpp: tensor {name} is {what} {list(s.error_ne)}, expected f32 [{rec.d}, {rec.rows}, 1, 1] "
                "with contiguous rows"
            )
        if s.error == ERR_TWICE:
            return CaptureError(f"llama.cpp: tensor {name} appears twice in one graph")
        if s.error == ERR_BOUNDS:
            return CaptureError(f"llama.cpp: rows {rec.row0}..{rec.row0 + rec.rows} are outside the step's buffers")
        return CaptureError("llama.cpp: the graph computed a tensor the callback was not asked about")

    def unbind(self) -> None:
        """Back to MODE_IDLE, pointing at nothing of the last recorder."""
        s = self.state
        s.mode = MODE_IDLE
        s.bases = s.layers = s.scratch = 0
        s.n = s.rows = s.row0 = 0
        self._keep = []
        self.native = False
