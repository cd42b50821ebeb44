"""A real ``llmri serve --variant honest@4=D.safetensors@4:SCALE --sae R4 --sae-k 5`` (subprocess, the
bundled model) driven by the ``openai`` SDK: the variant is listed, steers (its answer differs from the
base model's), equals ``llmri.capture`` with the same steer token for token (greedy), and its session
records the intervention; every session records the SAE's features."""

from __future__ import annotations

import numpy as np
import pytest

from serve_helpers import session_of, start_serve, stop

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri.interventions import Direction, from_meta  # noqa: E402

pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "Name three colours."}]
SCALE = 8.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from llmri.readouts.sae import SAE
    from llmri.readouts.sae.train import save_sae

    tmp = tmp_path_factory.mktemp("variants")
    rows = np.random.default_rng(1).standard_normal((1, 576)).astype(np.float32)
    Direction(rows, (4,), None, {"method": "random"}).save(tmp / "honest.safetensors")
    w = torch.randn(576, 64, generator=torch.Generator().manual_seed(0)) / 24
    save_sae(SAE(W_enc=w, b_enc=torch.zeros(64), W_dec=w.T.contiguous(), b_dec=torch.zeros(576), architecture="relu",
                 name="r4", source_format="test", path="", layer=4, signal="resid"), tmp / "r4")  # fmt: skip
    spec = f"{tmp / 'honest.safetensors'}@4:{SCALE}"
    proc, url, store = start_serve(tmp, "--name", "smollm2", "--variant", f"honest@4={spec}", "--sae", str(tmp / "r4"),
                                   "--sae-k", "5")  # fmt: skip
    with openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=600) as sdk:
        yield {"sdk": sdk, "store": store, "direction": tmp / "honest.safetensors"}
    stop(proc)


def chat(sdk, model: str):
    return sdk.chat.completions.create(model=model, messages=ASK, max_tokens=12, temperature=0, logprobs=True)


def test_the_variant_is_listed(server):
    models = {m.id: m for m in server["sdk"].models.list()}
    assert list(models) == ["smollm2", "smollm2+honest@4"]
    assert models["smollm2+honest@4"].model_extra["parent"] == "smollm2"


def test_the_variant_steers_as_capture_does(server, real_model):
    sdk, store = server["sdk"], server["store"]
    base, steered = chat(sdk, "smollm2"), chat(sdk, "smollm2+honest@4")
    assert steered.choices[0].message.content != base.choices[0].message.content
    rec = llmri.steer(llmri.load_direction(server["direction"]), [4], scale=SCALE)
    ref = llmri.capture(real_model, ASK, chat=True, max_new_tokens=12, temperature=0, interventions=[rec])
    want = [t for t, r in zip(ref.tokens.text, ref.tokens.role, strict=True) if r == "generated"]
    got = [c.token for c in steered.choices[0].logprobs.content]
    assert got == want[: len(got)] and steered.choices[0].message.content == ref.text
    s = session_of(store, steered.id)
    assert s.status == "complete" and from_meta(s.meta) == (rec,)
    assert s.meta["serve"]["model"] == "smollm2+honest@4" and s.meta["serve"]["variant"]["name"] == "honest@4"
    assert from_meta(session_of(store, base.id).meta) == ()


def test_every_session_records_the_sae(server):
    sdk, store = server["sdk"], server["store"]
    for model in ("smollm2", "smollm2+honest@4"):
        r = sdk.chat.completions.create(model=model, messages=ASK, max_tokens=4)
        s = session_of(store, r.id)
        f = s.sae("r4")
        assert f.ids.shape == (len(s), 5) and s.meta["sae"]["saes"][0]["name"] == "r4" and s.meta["sae"]["k"] == 5


def test_an_unknown_model_is_not_found(server):
    with pytest.raises(openai.NotFoundError) as e:
        server["sdk"].chat.completions.create(model="smollm2+dishonest@4", messages=ASK)
    assert e.value.code == "model_not_found"
