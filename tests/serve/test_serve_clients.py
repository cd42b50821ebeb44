"""A real ``llmri serve`` (subprocess, bundled model, loopback) driven by real clients: the ``openai``
SDK, llmri's own chat-only client, 50 concurrent streams, a client killed mid-stream. The reference
for every answer is the session the server recorded, re-read from its Zarr store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_helpers import session_of

openai = pytest.importorskip("openai")

import llmri  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def sdk(served):
    with openai.OpenAI(base_url=served["url"] + "/v1", api_key="unused-on-loopback", max_retries=0) as c:
        yield c


def generated(s) -> list[tuple[str, float]]:
    """The session's generated tokens, special ones left out: ``(text, logprob)``."""
    special = set(s.meta["special_ids"])
    t = s.tokens
    return [(x, float(lp)) for x, r, i, lp in zip(t.text, t.role, t.ids, t.logprob, strict=True)
            if r == "generated" and int(i) not in special]  # fmt: skip


def test_models(sdk):
    assert [m.id for m in sdk.models.list()] == [MODEL]


def test_chat_equals_its_session_token_for_token(sdk, served):
    r = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, user="sdk-test",
        extra_headers={"X-Request-Id": "abc-123"},
    )  # fmt: skip
    text = r.choices[0].message.content
    s = session_of(served["store"], r.id)
    assert s.status == "complete" and text == s.text and text
    toks = generated(s)
    got = [(c.token, c.logprob) for c in r.choices[0].logprobs.content]
    assert [t for t, _ in got] == [t for t, _ in toks]
    assert [lp for _, lp in got] == pytest.approx([lp for _, lp in toks], abs=1e-6)
    assert all(len(c.top_logprobs) == 3 for c in r.choices[0].logprobs.content)
    assert s.meta["client"] == "sdk-test" and s.meta["request_id"] == "abc-123" and s.meta["backend"] == "hf"
    assert s.meta["serve"]["sampling"]["max_tokens"] == 12 and s.meta["generation"]["max_new_tokens"] == 12
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == sum(1 for x in s.tokens.role if x == "prompt")


def test_streamed_chat_equals_its_session(sdk, served):
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True},
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    s = session_of(served["store"], chunks[0].id)
    assert text == s.text and s.meta["finish_reason"] == "length" and s.meta["serve"]["stream"] is True
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    # the same request unstreamed: the same answer (greedy)
    again = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0)
    assert again.choices[0].message.content == text


def test_completion_with_a_stop_string(sdk, served):
    first = sdk.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    full = first.choices[0].text
    words = full.split()
    stop = words[len(words) // 2]
    r = sdk.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0,
                               stop=[stop], logprobs=2)  # fmt: skip
    text = r.choices[0].text
    assert text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    s = session_of(served["store"], r.id)
    assert s.text.startswith(text) and stop in s.text and s.meta["answer_chars"] == len(text)
    assert s.meta["stop_reason"] == "stop_string" and s.meta["prompt"] == "The capital of France is"


def test_errors_in_openai_shape(sdk, served):
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="gpt-9", messages=ASK)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model=MODEL, messages=ASK, n=2)
    assert e.value.param == "n"
    r = httpx.post(served["url"] + "/v1/chat/completions", content=b'{"model": ', timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_llmri_chat_only_client_against_serve(served, tmp_path):
    """llmri's own chat-only mode (the client it uses for Ollama) pointed at llmri serve."""
    with llmri.ChatOnlyClient(served["url"] + "/v1") as c:
        assert c.resolve_model() == MODEL
        mine = c.chat(ASK, max_new_tokens=8, temperature=0, store=tmp_path / "client.zarr")
    assert mine.meta["logprobs"] is True and mine.text
    served_ids = llmri.open_store(served["store"]).session_ids()
    theirs = llmri.open_store(served["store"]).session(sorted(served_ids)[-1])
    assert theirs.text == mine.text
    assert [x for x, r in zip(mine.tokens.text, mine.tokens.role, strict=True) if r == "generated"] == [
        t for t, _ in generated(theirs)
    ]


def test_fifty_concurrent_streams(served):
    """Fifty streaming clients at once (a one-token prompt and two tokens each: the shared CPU runs
    every forward of all of them, one request at a time): each answered, each its own complete session."""

    def one(i: int) -> tuple[str, str]:
        with openai.OpenAI(base_url=served["url"] + "/v1", api_key="x", max_retries=0, timeout=900) as c:
            chunks = list(c.completions.create(model=MODEL, prompt="Hi", max_tokens=2, stream=True, user=f"client-{i}",
                                               seed=i, temperature=1.0))  # fmt: skip
        return chunks[0].id, "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert len({rid for rid, _ in results}) == 50
    store = llmri.open_store(served["store"])
    for i, (rid, text) in enumerate(results):
        s = store.session(rid.split("-", 1)[1])
        assert s.status == "complete" and s.meta["client"] == f"client-{i}" and s.text == text
        assert s.meta["generation"]["seed"] == i
        assert sum(1 for r in s.tokens.role if r == "generated") <= 2  # never two requests in one session


def test_four_concurrent_streams_batched_equal_each_alone(served, sdk):
    """Four greedy streams queued behind a running request are generated together (one batch): each
    streams what it streams alone, token for token, into its own complete session."""
    asks = ["Name three colours.", "What is 2+2?", "Say hello in French.", "Write a haiku about the sea."]

    def one(i: int) -> tuple[str, list[str], str]:
        with openai.OpenAI(base_url=served["url"] + "/v1", api_key="x", max_retries=0, timeout=900) as c:
            chunks = list(c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": asks[i]}], max_tokens=6 + 2 * i, temperature=0,
                stream=True, logprobs=True,
            ))  # fmt: skip
        toks = [
            t.token for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content
        ]
        return chunks[0].id, toks, "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    blocker = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=30, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(blocker))  # the worker is busy: the four queue behind it
    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(one, range(4)))
    for _ in blocker:
        pass
    alone = [one(i) for i in range(4)]
    for (rid, toks, text), (ref_id, ref_toks, ref_text) in zip(batched, alone, strict=True):
        s, ref = session_of(served["store"], rid), session_of(served["store"], ref_id)
        assert s.meta["serve"]["batch"] == 4 and ref.meta["serve"]["batch"] == 1
        assert s.status == "complete" and text == ref_text == s.text and toks == ref_toks
        assert [t for t, _ in generated(s)] == [t for t, _ in generated(ref)]


CLIENT = """
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0)
for chunk in c.chat.completions.create(model="default", messages=[{"role": "user", "content": "Tell a long story."}],
                                       max_tokens=400, stream=True):
    print(chunk.id, flush=True)
"""


def test_a_client_killed_mid_stream(served, sdk):
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, served["url"] + "/v1"], stdout=subprocess.PIPE, text=True)
    rid = proc.stdout.readline().strip()
    proc.stdout.readline()  # a token arrived: generation is under way
    listed = httpx.get(served["url"] + "/api/sessions", timeout=60).json()["sessions"]  # the viewer, while it records
    assert next(x for x in listed if x["id"] == rid.split("-", 1)[1])["status"] == "recording"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    deadline = time.monotonic() + 120
    while (s := session_of(served["store"], rid)).status == "recording" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert s.status == "complete" and s.meta["finish_reason"] == "disconnected" and s.meta["stop_reason"] == "stopped"
    assert 0 < sum(1 for r in s.tokens.role if r == "generated") < 400
    r = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)  # still serving
    assert r.choices[0].message.content


def test_cli_refuses_a_network_bind_without_a_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmri", "serve", "-o", str(tmp_path / "x.zarr"), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--api-key" in r.stderr
    assert not (tmp_path / "x.zarr").exists()
