"""The viewer over a study and served conversations: the session list's origin fields (client,
request id, prompt id, metadata), its ``?q=`` / ``?meta.KEY=`` filters and their bounds, and the study
overview endpoint, checked against the statistics read from the store itself."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

import llmri  # noqa: E402
from llmri.study import study_stats  # noqa: E402
from llmri.testing.frames import base_meta, make_frame  # noqa: E402
from llmri.viewer import create_app  # noqa: E402

BASE = "http://127.0.0.1:8000"
PROMPTS = [
    {"id": "q-sky", "prompt": "Why is the sky blue?", "topic": "physics", "level": 1},
    {"id": "q-grass", "prompt": "Why is grass green?", "topic": "biology", "level": 2},
    {"id": "q-sea", "prompt": "Why is the sea salty?", "topic": "physics", "level": 2},
]


def served_meta(client: str, request_id: str, text: str) -> dict:
    """A session's metadata as ``llmri serve`` records it (src/llmri/serve/routes.py)."""
    return {
        **base_meta(),
        "client": client,
        "request_id": request_id,
        "serve": {"endpoint": "/v1/chat/completions", "model": "smollm2", "stream": True},
        "messages": [{"role": "user", "content": text}],
        "created": "2026-12-07T06:00:00+00:00",
    }


@pytest.fixture(scope="module")
def study_store(tmp_path_factory, synthetic_model):
    """A Zarr store with a three-prompt study (capture_many, its running statistics stored) and two
    served conversations from different clients."""
    path = tmp_path_factory.mktemp("study") / "study.zarr"
    llmri.capture_many(synthetic_model, PROMPTS, batch_size=2, store=path, max_new_tokens=3, progress=False)
    st = llmri.open_store(path)
    for client, rid, text in [("alice", "req-1", "Tell me about owls"), ("bob", "req-2", "Tell me about cats")]:
        with st.create_session(served_meta(client, rid, text)) as w:
            for i in range(3):
                w.append(make_frame(i))
    return path


@pytest.fixture()
def client(study_store):
    return TestClient(create_app(study_store, port=8000), base_url=BASE)


def _listed(client, **params) -> list[dict]:
    r = client.get("/api/sessions", params=params)
    assert r.status_code == 200, r.text
    return r.json()["sessions"]


def test_list_carries_origin_fields(client):
    sessions = _listed(client)
    assert len(sessions) == 5
    served = {s["client"]: s for s in sessions if s["served"]}
    assert set(served) == {"alice", "bob"}
    assert served["alice"]["request_id"] == "req-1" and served["alice"]["prompt_id"] == ""
    study = {s["prompt_id"]: s for s in sessions if not s["served"]}
    assert set(study) == {"q-sky", "q-grass", "q-sea"}
    assert study["q-grass"]["metadata"] == {"topic": "biology", "level": 2}
    assert study["q-sky"]["title"].startswith("Why is the sky blue")
    assert all(s["created"] for s in sessions)


def test_search_text_is_case_insensitive(client):
    assert [s["prompt_id"] for s in _listed(client, q="GRASS")] == ["q-grass"]
    assert [s["client"] for s in _listed(client, q="owls")] == ["alice"]
    assert [s["client"] for s in _listed(client, q="req-2")] == ["bob"]
    assert {s["prompt_id"] for s in _listed(client, q="PHYSICS")} == {"q-sky", "q-sea"}
    assert _listed(client, q="no such text anywhere") == []


def test_meta_filters_are_exact(client):
    assert {s["prompt_id"] for s in _listed(client, **{"meta.topic": "physics"})} == {"q-sky", "q-sea"}
    assert [s["prompt_id"] for s in _listed(client, **{"meta.topic": "physics", "meta.level": "2"})] == ["q-sea"]
    assert _listed(client, **{"meta.topic": "phys"}) == []  # exact, not a substring
    assert [s["client"] for s in _listed(client, **{"meta.client": "bob"})] == ["bob"]
    assert _listed(client, **{"meta.nokey": "x"}) == []
    # the same filters on one store's list
    r = client.get("/api/stores/s0/sessions", params={"meta.prompt_id": "q-sky", "q": "sky"})
    assert r.status_code == 200 and [s["prompt_id"] for s in r.json()["sessions"]] == ["q-sky"]


@pytest.mark.parametrize(
    "query",
    [
        "bogus=1",
        "meta.=x",
        "q=a&q=b",
        "q=" + "x" * 201,
        "meta.topic=" + "x" * 201,
        "meta." + "k" * 65 + "=1",
        "&".join(f"meta.k{i}=1" for i in range(9)),
    ],
)
def test_bad_list_queries_are_one_line_400s(client, query):
    for url in ("/api/sessions", "/api/stores/s0/sessions"):
        r = client.get(f"{url}?{query}")
        assert r.status_code == 400, (url, query, r.text)
        err = r.json()["error"]
        assert err and "\n" not in err


def test_study_overview_equals_the_stored_statistics(client, study_store):
    expected = study_stats(llmri.open_store(study_store))
    assert expected is not None and expected.count.sum() > 0
    r = client.get("/api/stores/s0/study")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["signals"] == expected.signals
    assert len(body["layers"]) == expected.n_layers
    summ = expected.summary()
    for sig in expected.signals:
        got = body["stats"][sig]
        for field, want in summ[sig].items():
            assert len(got[field]) == expected.n_layers
            for a, b in zip(got[field], want, strict=True):
                assert (a is None and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), (sig, field)
    # the stored statistics are the study's: counts are the study sessions' frames
    n_frames = sum(len(s) for s in llmri.open_store(study_store).sessions() if isinstance(s.meta.get("study"), dict))
    assert body["stats"][expected.signals[0]]["count"] == [n_frames] * expected.n_layers
    assert body["n_sessions"] == 3


def test_study_overview_of_a_store_without_a_study_is_empty(synthetic_model):
    st = llmri.MemoryFrameStore()
    st.add(llmri.capture(synthetic_model, "Hi", chat=True, max_new_tokens=2))
    client = TestClient(create_app(st, port=8000), base_url=BASE)
    r = client.get("/api/stores/s0/study")
    assert r.status_code == 200
    assert r.json() == {"store": "s0", "signals": [], "layers": [], "n_sessions": 0, "stats": {}}
    r = client.get("/api/stores/nope/study")
    assert r.status_code == 404 and "\n" not in r.json()["error"]


# -- in a real browser ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_page_lists_origins_searches_and_shows_the_study(study_store, browser):
    """Chromium on the served page: the picker labels served sessions with client and time and study
    sessions with their prompt id; typing in the search box narrows it (the server's ``?q=``) to the
    one match, which opens; ``key=value`` words filter by metadata (``?meta.KEY=``); the study button
    draws the stored statistics per layer."""
    import os

    from llmri.testing import CHROMIUM, ServedApp

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (set LLMRI_CHROMIUM)")
    served = ServedApp(create_app(study_store))
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)  # for wait_for_function
    page = ctx.new_page()
    try:
        page.goto(served.url + "/")
        page.wait_for_function("window.llmri && window.llmri.ready", timeout=30000)
        labels = page.eval_on_selector_all("#session-select option", "os => os.map(o => o.textContent)")
        assert len(labels) == 5
        assert any(t.startswith("[alice · 2026-12-07 06:00:00] Tell me about owls") for t in labels), labels
        assert any(t.startswith("[bob · 2026-12-07 06:00:00]") for t in labels), labels
        assert {t.split("]")[0] for t in labels if t.startswith("[#")} == {"[#q-sky", "[#q-grass", "[#q-sea"}

        page.fill("#session-search", "GRASS")
        page.wait_for_function("document.querySelectorAll('#session-select option').length === 1")
        only = page.eval_on_selector("#session-select option", "o => [o.value, o.textContent]")
        assert only[1].startswith("[#q-grass] Why is grass green?")
        page.select_option("#session-select", only[0])
        page.wait_for_function(f"window.llmri.state.loaded === {only[0]!r}")

        page.fill("#session-search", "alice")  # a client's name finds its conversation
        page.wait_for_function(
            "[...document.querySelectorAll('#session-select option')].map(o => o.textContent).join('|')"
            ".startsWith('[alice')"
        )
        assert page.eval_on_selector_all("#session-select option", "os => os.length") == 1
        page.fill("#session-search", "topic=physics")  # key=value: an exact metadata filter (?meta.topic=)
        page.wait_for_function("document.querySelectorAll('#session-select option').length === 2")
        ids = page.eval_on_selector_all("#session-select option", "os => os.map(o => o.textContent.split(']')[0])")
        assert sorted(ids) == ["[#q-sea", "[#q-sky"]
        page.fill("#session-search", "topic=physics level=2 salty")  # filters and text together
        page.wait_for_function("document.querySelectorAll('#session-select option').length === 1")
        assert page.eval_on_selector("#session-select option", "o => o.textContent").startswith("[#q-sea")
        page.fill("#session-search", "")
        page.wait_for_function("document.querySelectorAll('#session-select option').length === 5")

        expected = study_stats(llmri.open_store(study_store))
        assert expected is not None
        page.click("#study-btn")
        page.wait_for_selector("#study:not([hidden]) table.study-table")
        sig = expected.signals[0]
        counts = page.eval_on_selector_all(
            f"table.study-table[data-signal={sig!r}] tr td:nth-child(2)", "tds => tds.map(t => Number(t.textContent))"
        )
        assert counts == expected.count[0].tolist()
        widths = page.eval_on_selector_all("table.study-table td.bar span", "ss => ss.map(s => s.style.width)")
        assert widths and all(w.endswith("%") for w in widths) and "100%" in widths
    finally:
        ctx.close()
        served.close()
