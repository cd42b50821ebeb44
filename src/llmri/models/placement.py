"""Where and in what a loaded model's weights live: the dtype names, and accelerate's device maps."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from .._errors import ModelLoadError


def torch_dtype(dtype: Any) -> Any:
    """A ``torch.dtype`` from ``None`` (float32), a dtype, or a name (float32, bfloat16, float16)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return names[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from None


@dataclass(frozen=True)
class DeviceMap:
    """An accelerate ``device_map`` (``"auto"``, or ``{module: "cpu" | "disk" | "cuda:0" | ...}``)
    for ``from_pretrained``; ``offload_folder`` holds what goes to ``"disk"`` (default: a new
    temporary directory). The model is dispatched by accelerate and never moved afterwards."""

    device_map: Any
    offload_folder: str | None = None

    def kwargs(self) -> dict[str, Any]:
        folder = self.offload_folder or tempfile.mkdtemp(prefix="llmri-offload-")
        return {"device_map": self.device_map, "offload_folder": folder}


def placement_kwargs(device: Any) -> dict[str, Any]:
    """``from_pretrained``'s placement arguments for a ``device`` that is a :class:`DeviceMap`."""
    return device.kwargs() if isinstance(device, DeviceMap) else {}
