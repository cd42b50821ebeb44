"""ctypes bindings for the few ggml functions the eval callback needs (llama-cpp-python's ``libggml-base``).

llama-cpp-python binds llama.h but not the ggml tensor API. The callback receives a bare
``struct ggml_tensor *``; it reads the name, type and shape from the struct and copies the data
out with ``ggml_backend_tensor_get``. The struct's layout is checked once, on a tensor made here.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._errors import CaptureError, require

GGML_TYPE_F32 = 0
GGML_TYPE_NAMES = {0: "f32", 1: "f16", 30: "bf16"}
_LIBS = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")


class TensorHead(ctypes.Structure):
    """The head of ``struct ggml_tensor`` (ggml.h), stable across ggml versions: the element type,
    the buffer, ``ne`` (elements per axis, ``ne[0]`` the fastest) and ``nb`` (bytes per step)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@dataclass(frozen=True)
class Ggml:
    """The bound functions and the offset of ``ggml_tensor.name`` (a NUL-terminated ``char[64]``)."""

    tensor_get: Any  # ggml_backend_tensor_get(tensor, dst, offset, size)
    nbytes: Any  # ggml_nbytes(tensor) -> size_t
    get_name: Any  # ggml_get_name(tensor) -> const char *
    name_offset: int


def find_library() -> Path:
    """``libggml-base`` as bundled with llama-cpp-python (its ``lib/`` directory, or next to it)."""
    llama_cpp = require("llama_cpp", "llamacpp")
    root = Path(llama_cpp.__file__).resolve().parent
    for where in (root / "lib", root):
        for name in _LIBS:
            if (where / name).is_file():
                return where / name
    raise CaptureError(f"llama.cpp: cannot find libggml-base next to llama_cpp (looked in {root / 'lib'} and {root})")


@functools.cache
def ggml() -> Ggml:
    """Load ``libggml-base`` once, bind the functions, and check the tensor struct on a tensor made here."""
    lib = ctypes.CDLL(str(find_library()))
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_get_name.restype = ctypes.c_void_p
    lib.ggml_init.argtypes = [_InitParams]
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.restype = None
    lib.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_new_tensor_2d.restype = ctypes.c_void_p
    lib.ggml_set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_set_name.restype = ctypes.c_void_p
    ctx = lib.ggml_init(_InitParams(1 << 16, None, True))
    if not ctx:
        raise CaptureError("llama.cpp: ggml_init failed")
    try:
        t = lib.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 7, 3)
        lib.ggml_set_name(t, b"llmri-probe")
        head = TensorHead.from_address(t)
        offset = lib.ggml_get_name(t) - t
        ok = (
            head.type == GGML_TYPE_F32
            and list(head.ne) == [7, 3, 1, 1]
            and list(head.nb[:2]) == [4, 28]
            and lib.ggml_nbytes(t) == 84
            and ctypes.string_at(t + offset) == b"llmri-probe"
        )
    finally:
        lib.ggml_free(ctx)
    if not ok:
        raise CaptureError("llama.cpp: this ggml's tensor struct is not laid out as llmri expects (ggml.h changed)")
    return Ggml(lib.ggml_backend_tensor_get, lib.ggml_nbytes, lib.ggml_get_name, offset)
