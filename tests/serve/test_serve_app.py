"""The /v1 API in-process on the synthetic model: request checks and OpenAI's error shape, the
security gate (key, Host, Origin), size and token limits, and each request recorded as a session."""

from __future__ import annotations

import json

import pytest

from llmri.backends.synthetic import REPLY
from serve_helpers import make_app

CHAT = {"model": "synthetic", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


def is_openai_error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_chat_is_recorded_as_a_session(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"}, headers={"X-Request-Id": "req-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert text == REPLY and body["choices"][0]["finish_reason"] == "stop"
    key = r.headers["x-llmri-session"]
    s = client.store.session(key.split("/")[1])
    assert s.status == "complete" and s.text == text
    assert s.meta["client"] == "alice" and s.meta["request_id"] == "req-1"
    assert s.meta["serve"]["endpoint"] == "/v1/chat/completions" and s.meta["serve"]["sampling"]["temperature"] == 0
    assert s.meta["finish_reason"] == "stop" and s.meta["answer_chars"] == len(text)
    assert s.meta["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["usage"]["completion_tokens"] == sum(1 for r in s.tokens.role if r == "generated")


def test_stream_chunks_and_usage(client):
    with client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stop_string_cuts_before_it(client):
    stop = REPLY[10:14]
    r = client.post(
        "/v1/completions", json={"model": "synthetic", "prompt": "x", "stop": stop, "logprobs": 2, "temperature": 0}
    )
    text = r.json()["choices"][0]["text"]
    assert text == REPLY[: REPLY.index(stop)]
    s = client.store.session(r.headers["x-llmri-session"].split("/")[1])
    assert s.text.startswith(text) and stop in s.text and s.meta["answer_chars"] == len(text)
    lp = r.json()["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]).startswith(text) and len(lp["top_logprobs"][0]) <= 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**CHAT, "model": "nope"}, 404, "model"),
        ({**CHAT, "n": 2}, 400, "n"),
        ({**CHAT, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({**CHAT, "temperature": "hot"}, 400, "temperature"),
        ({**CHAT, "top_logprobs": 9, "logprobs": True}, 400, "top_logprobs"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
        ({**CHAT, "max_tokens": 10**6}, 400, "max_tokens"),
        ({"messages": CHAT["messages"]}, 400, "model"),
        ({**CHAT, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ],
)
def test_bad_fields_are_openai_errors(client, body, status, param):
    is_openai_error(client.post("/v1/chat/completions", json=body), status, param)
    assert client.store.session_ids() == []  # refused before any session


def test_bad_json_and_routes(client):
    is_openai_error(client.post("/v1/chat/completions", content=b"{bad"), 400)
    is_openai_error(client.post("/v1/chat/completions", content=b"[1]"), 400)
    is_openai_error(client.post("/v1/completions", content=b'{"model": "synthetic", "prompt": [1, 2]}'), 400)
    is_openai_error(client.get("/v1/chat/completions"), 405)
    is_openai_error(client.get("/v1/embeddings"), 404)
    assert client.get("/v1/models").json()["data"][0]["id"] == "synthetic"


def test_body_size_limit(tmp_path):
    from starlette.testclient import TestClient

    import llmri

    gate = make_app(llmri.open_store(tmp_path / "s.zarr", create=True), max_body=1000)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        is_openai_error(c.post("/v1/chat/completions", json=big), 413)
    gate.app.state.serve.close()


def test_api_key_on_every_route(tmp_path):
    from starlette.testclient import TestClient

    import llmri

    gate = make_app(llmri.open_store(tmp_path / "s.zarr", create=True), api_key="secret-key-1")
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        is_openai_error(c.get("/v1/models"), 401)
        is_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong-key"}), 401)
        assert c.get("/api/sessions").status_code == 401  # the viewer too
        ok = {"Authorization": "Bearer secret-key-1"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/api/sessions", headers=ok).status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT, headers=ok).status_code == 200
        assert c.get("/?token=secret-key-1").status_code == 200  # a browser's first visit
    gate.app.state.serve.close()


def test_remote_needs_a_key(tmp_path):
    import llmri

    with pytest.raises(ValueError, match="API key"):
        make_app(llmri.open_store(tmp_path / "s.zarr", create=True), remote=True)


def test_host_and_origin_refused(client):
    err = is_openai_error(client.get("/v1/models", headers={"Host": "evil.example:8000"}), 403)
    assert "Host" in err["message"]
    r = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"})
    is_openai_error(r, 403)
    assert client.get("/api/sessions", headers={"Host": "evil.example"}).status_code == 403
    assert client.store.session_ids() == []


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_tools_reach_a_template_that_reads_them(tmp_path):
    from starlette.testclient import TestClient

    import llmri
    from llmri.backends.synthetic import ByteTokenizer, SyntheticModel

    class ToolTokenizer(ByteTokenizer):
        chat_template = "{% if tools %}...{% endif %}"  # a template that reads `tools`

        def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, tools=None):
            head = "".join(f"<tool>{t['function']['name']}\n" for t in tools or [])
            return head + super().apply_chat_template(messages, add_generation_prompt, tokenize)

    model = SyntheticModel()
    model.tokenizer = ToolTokenizer()
    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    gate = make_app(store, model)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "tools": TOOLS, "tool_choice": "auto", "max_tokens": 4})
        assert r.status_code == 200, r.text
    gate.app.state.serve.close()
    s = store.session(r.headers["x-llmri-session"].split("/")[1])
    assert s.prompt_text.startswith("<tool>get_weather\n<user>Hi\n<assistant>")
    assert s.meta["messages"] == CHAT["messages"] and s.meta["serve"]["tools"] == TOOLS
    assert "tools_ignored" not in s.meta["serve"]


def test_tools_without_a_template_for_them_are_recorded_as_ignored(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": TOOLS, "max_tokens": 4, "metadata": {"a": 1}})
    s = client.store.session(r.headers["x-llmri-session"].split("/")[1])
    assert s.meta["serve"]["tools_ignored"] is True and s.prompt_text == "<user>Hi\n<assistant>"
    assert s.meta["serve"]["ignored"] == ["metadata"]


@pytest.mark.slow
def test_a_gguf_on_the_llamacpp_backend(tmp_path):
    """The bundled GGUF run by llama.cpp itself (what ``llmri serve model.gguf`` serves)."""
    pytest.importorskip("llama_cpp")
    from starlette.testclient import TestClient

    import llmri
    from llmri.models.identity import default_gguf_path

    model = llmri.load_model(str(default_gguf_path()), backend="llama.cpp")
    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    gate = make_app(store, model)
    body = {**CHAT, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        r = c.post("/v1/chat/completions", json=body)
    gate.app.state.serve.close()
    text = r.json()["choices"][0]["message"]["content"]
    s = store.session(r.headers["x-llmri-session"].split("/")[1])
    assert s.meta["backend"] == "llama.cpp" and s.status == "complete" and s.text == text and text
    got = [c["logprob"] for c in r.json()["choices"][0]["logprobs"]["content"]]
    want = [float(lp) for lp, role in zip(s.tokens.logprob, s.tokens.role, strict=True) if role == "generated"]
    assert got == pytest.approx(want[: len(got)], abs=1e-6)


def test_closing_the_server_stops_the_running_request(tmp_path):
    import threading
    import time

    from starlette.testclient import TestClient

    import llmri

    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    gate = make_app(store, max_tokens_limit=4000)
    out = []
    body = {**CHAT, "max_tokens": 4000, "ignore_eos": True}
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        t = threading.Thread(target=lambda: out.append(c.post("/v1/chat/completions", json=body)))
        t.start()
        deadline = time.monotonic() + 60
        while not store.session_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        gate.app.state.serve.close()
        t.join(60)
    (sid,) = store.session_ids()
    s = store.session(sid)
    assert s.status == "complete" and s.meta["finish_reason"] == "disconnected"
    assert out[0].json()["choices"][0]["finish_reason"] == "disconnected"
    assert sum(1 for r in s.tokens.role if r == "generated") < 4000
