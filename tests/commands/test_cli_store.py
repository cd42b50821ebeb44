"""`llmri capture / info / export` end to end, on real stores and real output files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import llmri
from llmri.cli import main
from llmri.render.grid import frame_size, render_frame


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, command, match):
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"llmri {command}: error: ") and match in lines[0], err
    assert "Traceback" not in err


@pytest.fixture
def store_with_session(tmp_path, capsys):
    path = tmp_path / "run.zarr"
    rc, out, err = run_cli(capsys, "capture", "Why is the sky blue?", "-o", path, "--backend", "synthetic",
                           "--max-new-tokens", "20")  # fmt: skip
    assert rc == 0, err
    return path, out.strip()


def test_capture_prints_the_session_id_and_creates_the_store(store_with_session):
    path, sid = store_with_session
    store = llmri.open_store(path)
    assert store.session_ids() == [sid]
    s = store.session(sid)
    assert s.status == "complete" and s.meta["backend"] == "synthetic" and len(s) > 20
    assert s.text == "The sky is blue beca"
    assert s.meta["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


def test_capture_appends_to_an_existing_store(store_with_session, capsys):
    path, sid = store_with_session
    opts = ["--max-new-tokens", "3", "--signals", "resid", "--tile", "8x8", "--reducer", "neurons"]
    rc, out, _ = run_cli(capsys, "capture", "hello", "-o", path, "--backend", "synthetic", "--raw", *opts)
    assert rc == 0
    sid2 = out.strip()
    store = llmri.open_store(path)
    assert sorted(store.session_ids()) == sorted([sid, sid2])
    s2 = store.session(sid2)
    assert s2.signals == ["resid"] and s2.tile == (8, 8) and s2.meta["messages"] is None
    assert s2.meta["reducer"]["kind"] == "neurons" and s2.prompt_text == "hello"


def test_capture_messages_file(tmp_path, capsys):
    chat = tmp_path / "chat.json"
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    chat.write_text(json.dumps(msgs))
    opts = ["--max-new-tokens", "5", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"]
    rc, out, err = run_cli(
        capsys, "capture", "--messages", chat, "-o", tmp_path / "c.zarr", "--backend", "synthetic", *opts
    )
    assert rc == 0, err
    s = llmri.open_store(tmp_path / "c.zarr").session(out.strip())
    assert s.meta["messages"] == msgs
    assert s.meta["generation"]["temperature"] == 0.7 and s.meta["generation"]["seed"] == 3


def test_info_table_and_details(store_with_session, capsys):
    path, sid = store_with_session
    rc, out, err = run_cli(capsys, "info", path)
    assert rc == 0 and err == ""
    header, row = out.strip().splitlines()
    assert header.split() == ["id", "created", "model", "tokens", "signals", "status"]
    assert row.split()[0] == sid and row.split()[2] == "synthetic-6x64" and row.split()[-1] == "complete"
    rc, out, _ = run_cli(capsys, "info", path, sid)
    assert rc == 0
    assert f"session      {sid}" in out and "generated text\nThe sky is blue beca" in out
    assert "stop reason  max_new_tokens" in out
    rc, out, _ = run_cli(capsys, "info", path, "latest", "--json")
    assert json.loads(out)["meta"]["id"] == sid
    rc, out, _ = run_cli(capsys, "info", path, "--json")
    assert [r["id"] for r in json.loads(out)["sessions"]] == [sid]


def test_info_reports_a_bad_session_and_lists_the_rest(store_with_session, capsys):
    path, sid = store_with_session
    bad = path / "sessions" / "20200101-000000-abcdef"
    bad.mkdir()
    (bad / "zarr.json").write_text("{oops")
    rc, out, err = run_cli(capsys, "info", path)
    assert rc == 0 and sid in out
    assert "skipped" in err and "20200101-000000-abcdef" in err and "not valid JSON" in err
    rc, out, err = run_cli(capsys, "info", path, "20200101-000000-abcdef")
    assert_one_line_error(rc, err, "info", "corrupt metadata")


def test_export_npz_has_every_array(store_with_session, tmp_path, capsys):
    path, sid = store_with_session
    out_file = tmp_path / "s.npz"
    rc, out, err = run_cli(capsys, "export", path, sid, "--format", "npz", "-o", out_file)
    assert rc == 0, err
    s = llmri.open_store(path).session(sid)
    with np.load(out_file) as z:
        for sig in s.signals:
            np.testing.assert_array_equal(z[f"frames_{sig}"], s.frames(sig))
            np.testing.assert_array_equal(z[f"norm_{sig}"], s.stats(sig)[0])
            np.testing.assert_array_equal(z[f"sparsity_{sig}"], s.stats(sig)[1])
        np.testing.assert_array_equal(z["token_ids"], s.tokens.ids)
        assert z["token_text"].tolist() == s.tokens.text
        np.testing.assert_array_equal(z["top_probs"], s.tokens.top_probs)
        assert json.loads(str(z["meta_json"]))["id"] == sid


def test_export_json(store_with_session, tmp_path, capsys):
    path, sid = store_with_session
    rc, _, _ = run_cli(capsys, "export", path, sid, "-f", "json", "-o", tmp_path / "s.json")
    assert rc == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    s = llmri.open_store(path).session(sid)
    assert doc["meta"]["id"] == sid and doc["text"] == s.text and len(doc["tokens"]) == len(s)
    assert doc["tokens"][0]["logprob"] is None and doc["tokens"][5]["top"][0]["id"] >= 0


def test_export_png_matches_the_viewer_layout(store_with_session, tmp_path, capsys):
    from PIL import Image

    path, sid = store_with_session
    s = llmri.open_store(path).session(sid)
    rc, _, _ = run_cli(capsys, "export", path, sid, "-f", "png", "-o", tmp_path / "f.png", "--frame", "7",
                       "--cmap", "grayscale", "--pixel", "3", "--signal", "attn")  # fmt: skip
    assert rc == 0
    img = np.asarray(Image.open(tmp_path / "f.png").convert("RGB"))
    h, w = frame_size(len(s.layers), *s.tile, pixel=3)
    assert img.shape[1] == w and img.shape[0] > h  # the caption strip sits under the frame
    want = render_frame(s.frames("attn", 7, 8)[0], s.meta["scales"]["attn"], "grayscale", pixel=3)
    np.testing.assert_array_equal(img[:h], want)
    assert img[h:].max() > 200  # the caption was written
    rc, out, _ = run_cli(capsys, "export", path, sid, "-f", "png", "-o", tmp_path / "all")
    assert rc == 0 and len(list((tmp_path / "all").glob("frame_*.png"))) == len(s)


def test_export_gif_and_mp4(store_with_session, tmp_path, capsys):
    import imageio.v3 as iio
    from PIL import Image

    path, sid = store_with_session
    n = len(llmri.open_store(path).session(sid))
    rc, _, err = run_cli(capsys, "export", path, sid, "-f", "gif", "-o", tmp_path / "s.gif", "--fps", "10")
    assert rc == 0, err
    with Image.open(tmp_path / "s.gif") as g:
        assert g.n_frames == n
    rc, _, err = run_cli(capsys, "export", path, sid, "-f", "mp4", "-o", tmp_path / "s.mp4")
    assert rc == 0, err
    frames = iio.imread(tmp_path / "s.mp4", plugin="pyav") if _has_pyav() else _mp4_frames(tmp_path / "s.mp4")
    assert len(frames) == n and frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0


def _has_pyav():
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _mp4_frames(p):
    import imageio.v2 as iio2

    with iio2.get_reader(str(p), format="FFMPEG") as r:
        return [f for f in r]


def test_export_refuses_to_overwrite_without_force(store_with_session, tmp_path, capsys):
    path, sid = store_with_session
    out_file = tmp_path / "s.json"
    out_file.write_text("keep me")
    rc, _, err = run_cli(capsys, "export", path, sid, "-f", "json", "-o", out_file)
    assert_one_line_error(rc, err, "export", "exists (use --force")
    assert out_file.read_text() == "keep me"
    rc, _, _ = run_cli(capsys, "export", path, sid, "-f", "json", "-o", out_file, "--force")
    assert rc == 0 and json.loads(out_file.read_text())["meta"]["id"] == sid


@pytest.mark.parametrize(
    ("argv", "command", "match"),
    [
        (["info", "{tmp}/missing.zarr"], "info", "no such store"),
        (["export", "{tmp}/missing.zarr", "x", "-f", "json", "-o", "{tmp}/o.json"], "export", "no such store"),
        (["info", "{store}", "nope"], "info", "no session 'nope'"),
        (["export", "{store}", "nope", "-f", "json", "-o", "{tmp}/o.json"], "export", "no session 'nope'"),
        (["export", "{store}", "latest", "-f", "gif", "-o", "{tmp}/o.gif", "--signal", "foo"], "export", "no signal"),
        (["export", "{store}", "latest", "-f", "png", "-o", "{tmp}/o.png", "--cmap", "jet"], "export", "colour map"),
        (["export", "{store}", "latest", "-f", "png", "-o", "{tmp}/o.png", "--frame", "999"], "export", "no frame 999"),
        (["export", "{store}", "latest", "-f", "png", "-o", "{tmp}/nodir/o.png"], "export", "no such directory"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--backend", "synthetic", "--tile", "16y"], "capture", "bad tile"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--backend", "synthetic", "--signals", "foo"], "capture", "signal"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--backend", "nope"], "capture", "unknown backend 'nope'"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--reducer", "pca9"], "capture", "unknown reducer 'pca9'"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--backend", "synthetic", "--model", "m"], "capture", "drop --model"),
        (["capture", "-o", "{tmp}/c.zarr", "--backend", "synthetic"], "capture", "no prompt"),
        (["capture", "x", "-o", "{tmp}/file.txt", "--backend", "synthetic"], "capture", "not an llmri store"),
        (["capture", "--messages", "{tmp}/none.json", "-o", "{tmp}/c.zarr"], "capture", "no such file"),
        (["capture", "--messages", "{tmp}/file.txt", "-o", "{tmp}/c.zarr"], "capture", "not a JSON file"),
        (["capture", "x", "-o", "{tmp}/c.zarr", "--backend", "synthetic", "--top-p", "0"], "capture", "top_p"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(store_with_session, tmp_path, capsys, argv, command, match):
    path, _ = store_with_session
    (tmp_path / "file.txt").write_text("not json")
    argv = [a.format(tmp=tmp_path, store=path) for a in argv]
    rc, _, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, err, command, match)
    assert not (tmp_path / "c.zarr").exists()  # a capture that cannot start leaves no store behind


def test_usage_errors_exit_2(store_with_session, capsys):
    path, sid = store_with_session
    with pytest.raises(SystemExit) as exc:
        main(["export", str(path), sid, "-f", "bmp", "-o", "x"])
    assert exc.value.code == 2


def _cli(*argv, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "llmri", *map(str, argv)], env=env, timeout=300, **kw)


@pytest.mark.slow
def test_capture_is_quiet_when_piped_and_shows_progress_on_a_terminal(tmp_path):
    import pty

    p = _cli("capture", "hi", "-o", tmp_path / "p.zarr", "--backend", "synthetic", "--max-new-tokens", "40",
             capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and p.stderr == ""
    assert llmri.open_store(tmp_path / "p.zarr").session_ids() == [p.stdout.strip()]
    master, slave = pty.openpty()
    try:
        p = _cli("capture", "hi", "-o", tmp_path / "p.zarr", "--backend", "synthetic", "--max-new-tokens", "40",
                 stdout=subprocess.PIPE, stderr=slave, text=True)  # fmt: skip
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    err = b"".join(chunks).decode()
    assert p.returncode == 0
    assert "tok/s" in err and "40/40 tokens" in err
    assert len(p.stdout.strip().splitlines()) == 1  # stdout stays the session id alone


@pytest.mark.slow
def test_capture_with_the_real_model(tmp_path, real_model):
    p = _cli("capture", "Why is the sky blue?", "-o", tmp_path / "r.zarr", "--max-new-tokens", "4",
             capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = llmri.open_store(tmp_path / "r.zarr").session(p.stdout.strip())
    assert s.meta["model"]["name"] == "SmolLM2-135M-Instruct" and s.frames("resid").shape[1:] == (30, 16, 16)
    q = _cli("info", tmp_path / "r.zarr", s.id, capture_output=True, text=True)
    assert q.returncode == 0 and s.text in q.stdout and "SmolLM2-135M-Instruct" in q.stdout


def test_chat_only_session_exports(tmp_path, capsys):
    from llmri.testing.frames import make_frame

    store = llmri.open_store(tmp_path / "chat.zarr", create=True)
    with store.create_session({"signals": [], "layers": [], "tile": [0, 0], "backend": "openai"}) as w:
        for i in range(4):
            w.append(make_frame(i, [], role="generated"))
    rc, out, _ = run_cli(capsys, "info", tmp_path / "chat.zarr")
    assert rc == 0 and w.id in out and " - " in out
    rc, _, _ = run_cli(capsys, "export", tmp_path / "chat.zarr", w.id, "-f", "json", "-o", tmp_path / "c.json")
    assert rc == 0 and len(json.loads((tmp_path / "c.json").read_text())["tokens"]) == 4
    rc, _, _ = run_cli(capsys, "export", tmp_path / "chat.zarr", w.id, "-f", "npz", "-o", tmp_path / "c.npz")
    assert rc == 0 and np.load(tmp_path / "c.npz")["token_ids"].tolist() == [100, 101, 102, 103]
    rc, _, err = run_cli(capsys, "export", tmp_path / "chat.zarr", w.id, "-f", "gif", "-o", tmp_path / "c.gif")
    assert_one_line_error(rc, err, "export", "chat-only")
