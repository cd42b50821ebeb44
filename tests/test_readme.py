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
