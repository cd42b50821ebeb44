"""The viewer's REST API under schemathesis: a real ``llmri view`` (uvicorn, in a subprocess, on
127.0.0.1) over a Zarr store with every kind of session, fuzzed from the viewer's own OpenAPI
description. No answer may be a 5xx, and every error must be the viewer's one-line JSON error
(tests/viewer/viewer_fuzz_checks.py says what is checked).

The app serves no OpenAPI document (``openapi_url=None``); the test builds it from the viewer's
routers, the static routes included, and points the fuzzer at real ids (store, session, signal,
``STORE/SESSION`` keys) as well as arbitrary strings, plus the headers the security middleware reads
(``Host``, ``Origin``, ``Sec-Fetch-Site``). A loopback viewer has no launch token, so a legitimate
client sends nothing more than its own ``Host``, which is what the fuzzer's requests carry unless it
draws another.

schemathesis runs as its CLI in a subprocess (examples, coverage and fuzzing phases, valid and invalid
input, a fixed seed), since the schema exists only once the server is up; the check it applies is
tests/viewer/viewer_fuzz_checks.py, loaded through ``SCHEMATHESIS_HOOKS``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

import llmri  # noqa: E402
from llmri.frame import Frame, Token  # noqa: E402

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
#: Examples per operation and phase: with both modes (valid and invalid input) the run takes about 40 s
#: on two shared cores. A deeper hunt by hand: LLMRI_FUZZ_EXAMPLES=200 LLMRI_FUZZ_SEED=7 pytest ...
MAX_EXAMPLES = int(os.environ.get("LLMRI_FUZZ_EXAMPLES", "8"))
SEED = os.environ.get("LLMRI_FUZZ_SEED", "1")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, synthetic_model) -> dict[str, Any]:
    """Two stores: ``main.zarr`` with a captured session, one with lens and attention readouts, a
    chat-only one, one without frames and one still recording (its writer held open); ``empty.zarr``."""
    from llmri.testing.frames import base_meta, make_frame

    root = tmp_path_factory.mktemp("fuzz")
    path = root / "main.zarr"
    captured = llmri.capture(synthetic_model, "Why is the sky blue?", chat=True, max_new_tokens=6, store=path)
    store = llmri.open_store(path)
    with store.create_session(base_meta(readouts=True)) as w:
        for i in range(5):
            w.append(make_frame(i, readouts=True))
        readouts_id = w.id
    meta = {"signals": [], "layers": [], "tile": [0, 0], "chat_only": True, "backend": "openai", "model": {"name": "x"}}
    with store.create_session(meta) as w:
        for i, text in enumerate(["Hi", " there"]):
            w.append(Frame(Token(i, 100 + i, text, "generated", -0.5, 1.0, (100 + i,), (0.6,), (text,))))
        chat_id = w.id
    with store.create_session(base_meta(readouts=True)) as w:
        empty_id = w.id  # readouts promised, no frame written
    recording = store.create_session(base_meta())
    for i in range(3):
        recording.append(make_frame(i))
    recording.commit()
    from features_helpers import tiny_sae

    probe = llmri.Direction(np.ones((1, synthetic_model.d_model), np.float32), (1,)).named("ones")
    with_sae = llmri.capture(synthetic_model, "Hi", saes=[tiny_sae()], sae_k=4, probes=[probe], max_new_tokens=6,
                             store=path)  # fmt: skip
    # a patching sweep (its corrupt run names the captured one as its clean baseline) and one cell's run
    sweep = {"values": [[[0.5, 1.0]]], "signals": ["resid"], "layers": [0], "tokens": ["a", "b"], "clean": 1.0,
             "corrupt": 0.0, "metric": "logit_diff", "targets": [" a", " b"]}  # fmt: skip
    swept = llmri.capture(synthetic_model, "ab", chat=False, max_new_tokens=0, store=path,
                          meta={"baseline": captured.id, "patching": sweep})  # fmt: skip
    cell = {"sweep": swept.id, "signal": "resid", "layer": 0, "position": 1}
    llmri.capture(synthetic_model, "ab", chat=False, max_new_tokens=0, store=path,
                  meta={"baseline": swept.id, "patched_cell": cell})  # fmt: skip
    llmri.open_store(root / "empty.zarr", create=True)
    yield {
        "paths": [str(path), str(root / "empty.zarr")],
        "sessions": [captured.id, readouts_id, chat_id, empty_id, recording.id, swept.id, with_sae.id],
        "signals": list(captured.signals),
    }
    recording.close()


@pytest.fixture(scope="module")
def viewer(stores):
    """``llmri view`` on both stores, on a free loopback port: its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmri", "view", *stores["paths"], "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    # uvicorn prints a traceback for an exception no handler answered: there must be none
    assert "Traceback" not in out, out[-3000:]


def _one_of(*choices: list[Any], other: str | None = "string") -> dict[str, Any]:
    """A parameter drawn from each list of ``choices`` (the first is the likeliest, being listed in
    every later one too) or, with ``other``, any value of that type."""
    branches: list[dict[str, Any]] = [{"enum": c} for c in choices]
    if other:
        branches.append({"type": other})
    return {"anyOf": branches}


def viewer_openapi(base: str, stores: dict[str, Any]) -> dict[str, Any]:
    """The viewer's REST API as OpenAPI 3.1, from the routers ``create_app`` includes, the static
    routes (left out of the app's own description) too, with real values to aim at: each route's
    likeliest session is one it can answer for, its ranges lie mostly around the sessions' lengths."""
    from fastapi.openapi.utils import get_openapi
    from fastapi.routing import APIRoute

    from llmri.viewer.routes import features, frames, info, pairs, probes, progress, readouts, sessions, static, study

    routes = []
    for module in (static, info, sessions, pairs, study, frames, readouts, probes, features, progress):
        for route in module.router.routes:
            if isinstance(route, APIRoute):
                route = copy.copy(route)
                route.include_in_schema = True
                routes.append(route)
    doc = get_openapi(title="llmri viewer", version=llmri.__version__, routes=routes)
    ids = stores["sessions"]
    captured, with_readouts, swept, with_sae = ids[0], ids[1], ids[5], ids[6]
    sigs = stores["signals"]
    keys = [f"s0/{i}" for i in ids]
    hints: dict[str, Any] = {
        "store_id": _one_of(["s0"], ["s0", "s1"]),
        "signal": _one_of([sigs[0]], [*sigs, ",".join(sigs[:2]), f"{sigs[0]},{sigs[0]}", "resid,nope"]),
        "dtype": _one_of(["float16", "uint8"]),
        "a": _one_of([keys[0]], keys),
        "b": _one_of([keys[0]], keys),
        "name": _one_of(["index.html", "js/main.js", "app.css", "favicon.svg"]),
        "sae": _one_of(["toy"]),
        "feature": {"anyOf": [{"type": "integer", "minimum": -1, "maximum": 33}, {"type": "string"}]},
        # within or just past the sessions (0 to 20 frames), or any integer
        "start": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 21}, {"type": "integer"}]},
        "stop": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 21}, {"type": "integer"}]},
    }
    host = base.split("//", 1)[1]
    port = host.rsplit(":", 1)[1]
    other_port = f"127.0.0.1:{int(port) + 1}"
    hosts = [host, f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", other_port, f"evil.example:{port}"]
    examples = {"store_id": "s0", "signal": sigs[0], "dtype": "uint8", "a": keys[0], "b": keys[0], "name": "index.html"}
    for path, ops in doc["paths"].items():
        readout = path.rsplit("/", 1)[-1] in ("lens", "attention", "lensstrip", "markers")
        session = (
            swept
            if "/patching" in path
            else with_sae
            if "/features" in path or "/probestrip" in path
            else with_readouts
            if readout
            else captured
        )
        for method, op in ops.items():
            if method == "post":  # a heatmap cell: the stored one, others (no model: 409), or anything
                props = {"signal": _one_of(["resid"], ["resid", "mlp"]), "layer": _one_of([0], [0, 1], other="integer")}
                props["position"] = _one_of([1], [0, 1, 2], other="integer")
                cell = {"type": "object", "properties": props}
                body = {"schema": cell, "example": {"signal": "resid", "layer": 0, "position": 1}}
                op["requestBody"] = {"required": True, "content": {"application/json": body}}
            params = op.setdefault("parameters", [])
            for p in params:
                if p["name"] == "session_id":
                    p["schema"], p["example"] = _one_of([session], ids), session
                elif p["name"] in hints:
                    p["schema"] = hints[p["name"]]
                    if p["name"] in examples:
                        p["example"] = examples[p["name"]]
            params += [
                {"name": "Host", "in": "header", "required": False, "schema": _one_of([host], hosts)},
                {"name": "Origin", "in": "header", "required": False, "schema": _one_of([base], [base, "null"])},
                {
                    "name": "Sec-Fetch-Site",
                    "in": "header",
                    "required": False,
                    "schema": _one_of(["same-origin"], ["same-origin", "none", "same-site", "cross-site"]),
                },
            ]
    return doc


def test_the_viewer_api_under_fuzzing(viewer, stores, tmp_path):
    doc = viewer_openapi(viewer, stores)
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(doc))
    log = tmp_path / "answers.jsonl"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "viewer_fuzz_checks",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "LLMRI_FUZZ_LOG": str(log),
        "NO_COLOR": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(schema),
        "--url",
        viewer,
        "--checks",
        "not_a_server_error,viewer_answer_shape",
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--generation-database",
        "none",
        # one worker: hypothesis describes lambdas with ast.parse, and CPython 3.11's ast is not safe from
        # two threads ("SystemError: AST constructor recursion depth mismatch" failed about one run in two)
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-8000:]
    seen: dict[str, set[int]] = defaultdict(set)
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        seen[rec["operation"]].add(rec["status"])
    operations = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    assert set(seen) == operations, set(seen) ^ operations
    # each route answered a real request and refused a bad one, at least once
    # (a feature's direction needs the SAE's weights, which only a live viewer with --sae holds)
    never = {"GET /api/sessions/{store_id}/{session_id}/features/{sae}/direction"}
    unanswered = sorted(op for op, codes in seen.items() if op not in never and not any(200 <= c < 300 for c in codes))
    unrefused = sorted(op for op, codes in seen.items() if not any(400 <= c < 500 for c in codes))
    assert not unanswered, unanswered
    assert not unrefused, unrefused
