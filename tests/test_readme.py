"""The README's Python example runs as written, on the real bundled model, and every value its
comments state (``# ...: (84, 30, 16, 16)``) is the value the line gives."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: a comment that states a line's value: ``# what it is: <a Python literal>`` at its end
STATED = re.compile(r"#[^#]*:\s*(\(.*\)|\[.*\]|-?\d[\d.e+-]*|'[^']*'|\"[^\"]*\")\s*$")


def python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no Python example"
    return blocks[0]


def stated_values(code: str) -> dict[int, object]:
    """``{line number: value}`` for each line whose comment states its value."""
    out = {}
    for i, line in enumerate(code.splitlines(), 1):
        m = STATED.search(line)
        if m:
            out[i] = ast.literal_eval(m.group(1))
    return out


def test_the_readme_states_values_this_test_checks():
    assert stated_values(python_block()), "no '# ...: value' comment left to check"


@pytest.mark.slow
def test_the_readme_python_example_runs_and_says_what_it_gives(tmp_path, monkeypatch, real_model):
    import llmri

    code = python_block()
    stated = stated_values(code)
    tree = ast.parse(code)
    monkeypatch.chdir(tmp_path)
    # the example's own load, as a user runs it; the suite's loaded model stands in for the same files
    monkeypatch.setattr(llmri, "load_model", lambda *a, **k: real_model)
    namespace: dict[str, object] = {}
    seen = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and node.lineno in stated:
            seen[node.lineno] = eval(compile(ast.Expression(node.value), "README.md", "eval"), namespace)
        else:
            exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    assert set(seen) == set(stated)
    for line, value in stated.items():
        got = tuple(seen[line]) if isinstance(value, tuple) else seen[line]
        assert got == value, f"README line {line} says {value!r}, the code gives {got!r}"


def experiments() -> str:
    """The README's "Experiments" section."""
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Experiments") :].split("\n## ", 1)[0]


@pytest.mark.slow
def test_the_readme_study_is_killed_resumed_and_analysed(tmp_path, monkeypatch):
    """Issue 21's "done when": a 1,000-prompt study captured, killed, resumed and analysed from the
    README's instructions. Its study command as written (on the synthetic backend, a fake model
    without weights, and 4 new tokens a prompt, so that it takes seconds), in a subprocess SIGKILLed
    once some sessions are written, then the same command again, then its analysis line."""
    import json
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    import llmri

    section = experiments()
    (line,) = [x for x in section.splitlines() if x.startswith("llmri capture --prompts ") and "s3://" not in x]
    words = shlex.split(line.split("#")[0])
    assert words[:4] == ["llmri", "capture", "--prompts", "prompts.jsonl"] and "study.zarr" in words
    (analysis,) = re.findall(r'`(llmri\.open_store\("study\.zarr"\)[^`]*)`', section)

    n = 1000
    rows = [{"id": f"q{i}", "prompt": f"{i} + {i % 7}?", "topic": "abc"[i % 3]} for i in range(n)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "llmri", *words[1:], "--backend", "synthetic", "--max-new-tokens", "4"]
    src = str(Path(llmri.__file__).resolve().parents[1])  # the llmri under test, whatever the cwd
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    sessions = tmp_path / "study.zarr" / "sessions"

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (sessions.is_dir() and len(os.listdir(sessions)) >= 200):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    def metas() -> list[dict]:
        store = llmri.open_store(tmp_path / "study.zarr")
        return [store.session(s).meta for s in store.session_ids()]

    kept = [m for m in metas() if m["status"] == "complete"]
    assert 190 <= len(kept) < n

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{n - len(kept)} captured, {len(kept)} already complete"), again.stdout
    every = metas()
    complete = [m for m in every if m["status"] == "complete"]
    assert sorted(m["study"]["id"] for m in complete) == sorted(r["id"] for r in rows)  # each prompt once
    assert len(every) - len(complete) <= 1  # at most the one a kill caught while it was being written

    monkeypatch.chdir(tmp_path)
    per_layer = eval(analysis, {"llmri": llmri})  # the README's line, as written
    assert per_layer.dims == ("layer",) and per_layer.sizes["layer"] == 6
    assert np.isfinite(per_layer.values).all() and (per_layer.values > 0).all()
    # each prompt's metadata (its JSONL row's other keys) is a coordinate of the dataset
    ds = llmri.open_store("study.zarr").to_xarray()
    done = ds.sel(session=ds.status == "complete")
    assert dict(done.sizes)["session"] == n
    assert {k: int((done.topic == k).sum()) for k in "abc"} == {"a": 334, "b": 333, "c": 333}
