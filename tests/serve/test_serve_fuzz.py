"""Random request bodies (hypothesis) against the in-process /v1 API on the synthetic model: whatever a
client sends, the answer is a 200 in OpenAI's shape or a 4xx in OpenAI's error shape, never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import make_app

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"]),
        "content": st.text(max_size=30),
    }
)
FIELDS = {
    "model": st.sampled_from(["synthetic", "default", "nope", ""]) | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": st.text(max_size=20) | st.lists(st.text(max_size=5), max_size=2) | JSON,
    "max_tokens": st.integers(-2, 40) | JSON,
    "max_completion_tokens": st.integers(-2, 40),
    "temperature": st.floats(-1, 3, allow_nan=False) | JSON,
    "top_p": st.floats(-0.5, 1.5, allow_nan=False),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=6) | JSON,
    "seed": st.integers(-(2**70), 2**70),
    "n": st.integers(-1, 3),
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON,
    "logprobs": st.booleans() | st.integers(-1, 8),
    "top_logprobs": st.integers(-1, 25),
    "user": st.text(max_size=10) | JSON,
    "tools": st.lists(JSON, max_size=2) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | JSON,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | JSON,
    "ignore_eos": st.booleans(),
    "echo": st.booleans(),
    "whatever": JSON,
}
BODY = st.fixed_dictionaries({}, optional=FIELDS)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    from starlette.testclient import TestClient

    import llmri

    store = llmri.open_store(tmp_path_factory.mktemp("fuzz") / "s.zarr", create=True)
    gate = make_app(store, max_tokens_limit=16, default_max_tokens=4)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        yield c
    gate.app.state.serve.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_any_body_gets_an_openai_answer(fuzz_client, body, path):
    r = fuzz_client.post(path, content=json.dumps(body))
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [x for x in r.text.split("\n\n") if x]
        assert events[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in events)
        for x in events[:-1]:
            assert "error" not in json.loads(x[6:])
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
