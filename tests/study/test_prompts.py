"""A study's prompt sources: JSONL, CSV, a datasets directory, iterables; every bad input one line
naming the file and line, found before the study starts; files streamed, not loaded."""

from __future__ import annotations

import inspect
import json

import pytest

from llmri.study import PromptFileError, PromptRow, check_prompts, read_prompts, row_from_dict, rows_of


def _jsonl(tmp_path, lines, name="p.jsonl"):
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_jsonl_rows_keep_id_messages_and_metadata(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}]
    p = _jsonl(
        tmp_path, [{"prompt": "a", "id": "q1", "topic": "x", "n": 3}, "", {"messages": msgs}, {"prompt": "b", "id": 7}]
    )
    assert check_prompts(p) == 3
    rows = list(read_prompts(p))
    assert [r.prompt for r in rows] == ["a", msgs, "b"]
    assert [r.id for r in rows] == ["q1", None, "7"]
    assert rows[0].metadata == {"topic": "x", "n": 3} and rows[1].metadata == {}
    assert rows[2].where == f"{p}:4"  # the blank line counts
    assert row_from_dict(json.loads(json.dumps(rows[0].to_dict()))) == rows[0]


def test_keys_by_id_else_content_hash():
    a, b = PromptRow("x"), PromptRow("x", id="k")
    assert b.key({"m": 1}) == "id:k" == b.key({"m": 2})
    assert a.key({"m": 1}) != a.key({"m": 2})  # the settings are part of the hash
    assert a.key({"m": 1}, "fp1") != a.key({"m": 1}, "fp2")
    assert a.key({"m": 1}) == PromptRow("x", index=5).key({"m": 1})


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([{"prompt": "a"}, "{not json"], ":2: not JSON"),
        ([{"prompt": "a"}, {"text": "b"}], ":2: no 'prompt'"),
        ([{"prompt": "a"}, {"prompt": "b", "messages": []}], ":2: both 'prompt' and 'messages'"),
        ([{"prompt": "a", "id": 1}, {"prompt": "b"}, {"prompt": "c", "id": "1"}], ":3: duplicate id '1' (first at"),
        ([{"prompt": ""}], ":1: 'prompt' must be a non-empty string"),
        ([{"messages": [{"role": "wizard", "content": "x"}]}], ":1:"),
        (["[1, 2]"], ":1: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, lines, needle):
    p = _jsonl(tmp_path, lines)
    with pytest.raises(PromptFileError) as e:
        check_prompts(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and needle in msg


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        check_prompts(empty)
    with pytest.raises(PromptFileError, match="no such file"):
        check_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="no prompts"):
        list(rows_of(iter([])))


def test_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text('id,prompt,label\n1,"Hello, there",pos\n,second,neg\n')
    rows = list(rows_of(p))
    assert [(r.id, r.prompt, r.metadata) for r in rows] == [
        ("1", "Hello, there", {"label": "pos"}),
        (None, "second", {"label": "neg"}),
    ]
    assert rows[1].where == f"{p}:3"
    bad = tmp_path / "b.csv"
    bad.write_text("text\nx\n")
    with pytest.raises(PromptFileError, match=r"b\.csv:1: no 'prompt' column"):
        check_prompts(bad)
    short = tmp_path / "s.csv"
    short.write_text("prompt,label\nx,1\ny\n")
    with pytest.raises(PromptFileError, match=r"s\.csv:3: 2 columns expected"):
        check_prompts(short)


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": ["a", "b"], "id": ["x", "y"], "split": ["t", "v"]}).save_to_disk(str(d))
    rows = list(rows_of(d))
    assert [(r.id, r.prompt, r.metadata) for r in rows] == [("x", "a", {"split": "t"}), ("y", "b", {"split": "v"})]
    with pytest.raises(PromptFileError, match="not a datasets directory"):
        check_prompts(tmp_path)


def test_a_file_is_streamed_not_loaded(tmp_path):
    # structurally: rows come from a generator reading line by line, so a bad line far down is not
    # read (nor anything after the rows taken) until the consumer gets there
    p = _jsonl(tmp_path, [{"prompt": f"p{i}"} for i in range(10_000)] + ["{broken"])
    rows = read_prompts(p)
    assert inspect.isgenerator(rows)
    assert next(rows).prompt == "p0" and next(rows).prompt == "p1"
    with pytest.raises(PromptFileError, match=":10001: not JSON"):
        check_prompts(p)  # the first pass finds it, before any capture


def test_iterables_of_strings_and_dicts():
    rows = list(rows_of(["a", {"prompt": "b", "id": "2", "k": 1}]))
    assert [(r.prompt, r.id, r.metadata, r.where) for r in rows] == [
        ("a", None, {}, "prompts[0]"),
        ("b", "2", {"k": 1}, "prompts[1]"),
    ]
    gen = (x for x in [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}])
    it = iter(rows_of(gen))
    assert next(it).prompt == "a"
    with pytest.raises(PromptFileError, match=r"prompts\[1\]: duplicate id"):
        next(it)


def test_cli_refuses_a_bad_file_in_one_line_before_the_model(tmp_path, capsys):
    from llmri.cli import main

    p = _jsonl(tmp_path, [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    out = tmp_path / "s.zarr"
    assert main(["capture", "--prompts", str(p), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"llmri capture: error: {p}:2: duplicate id 'x' (first at {p}:1)"
    assert not out.exists()  # nothing created
    assert main(["capture", "hello", "--prompts", str(p), "-o", str(out)]) == 1
    assert "drop PROMPT" in capsys.readouterr().err


def test_cli_study_on_the_synthetic_backend(tmp_path, capsys):
    """``--backend synthetic`` brings its own fake model in a study as in one capture (a study used to
    load the bundled model and fail on its first step)."""
    import llmri
    from llmri.cli import main

    p = _jsonl(tmp_path, [{"prompt": f"p {i}", "id": i} for i in range(3)])
    out = tmp_path / "s.zarr"
    args = ["capture", "--prompts", str(p), "-o", str(out), "--backend", "synthetic", "--max-new-tokens", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("3 captured, 0 already complete")
    metas = [s.meta for s in llmri.open_store(out).sessions()]
    assert sorted(m["study"]["id"] for m in metas) == ["0", "1", "2"]
    assert {m["model"]["name"] for m in metas} == {"synthetic-6x64"}
    assert main([*args, "--model", "default"]) == 1
    assert "drop --model" in capsys.readouterr().err
