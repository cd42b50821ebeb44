"""Jupyter for the notebook tests: private HOME / config / data / runtime dirs, and a kernel that is this
venv's python (a kernelspec of our own; the user's ~/.local and ~/.jupyter are never read or written)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
KERNEL = "llmri-test"


def jupyter_env(root: Path) -> dict[str, str]:
    """Environment variables that confine Jupyter (server, kernels, IPython) to ``root``; the kernelspec
    ``llmri-test`` (and ``python3``, which the example notebooks name) run ``sys.executable``, importing
    the llmri this process imported (a worktree's ``src``, not the venv's editable install)."""
    import llmri
    from llmri.models.identity import cache_dir

    dirs = {name: root / name for name in ("home", "config", "data", "runtime", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for name in (KERNEL, "python3"):
        spec = dirs["data"] / "kernels" / name
        spec.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        doc = {"argv": argv, "display_name": f"Python ({name})", "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(doc))
    return {
        "HOME": str(dirs["home"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(dirs["ipython"]),
        "JUPYTER_PATH": str(dirs["data"]),
        # the converted bundled model stays where the suite's own process keeps it
        "LLMRI_CACHE": str(cache_dir()),
        "MPLBACKEND": "agg",
        "TOKENIZERS_PARALLELISM": "false",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PATH": os.environ.get("PATH", ""),
        # absolute: the kernel's cwd is a temp dir, where a relative PYTHONPATH=src finds nothing
        "PYTHONPATH": str(Path(llmri.__file__).resolve().parents[1]),
    }
