"""Interventions on the transformer-lens and nnsight backends, on a tiny random Llama (d_model 64, 3
layers, the bundled tokenizer's vocabulary: TransformerLens needs a transformers tokenizer).

Checked against independent references: the ``hf`` backend with the same record on the same weights
(the same tokens; frames within the tolerance of tests/backends/test_backends_agree.py), and an edit
written by hand in each library's own API — TransformerLens's ``run_with_hooks``, an nnsight trace —
over the whole sequence in one forward, which the capture, streamed token by token over its KV
cache, must equal (its greedy tokens and the edited site's vectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.backends import BACKENDS
from llmri.interventions import Plan

pytestmark = pytest.mark.slow  # the tokenizer and TransformerLens's bridge: ~15 s to set up

D = 64
PROMPT = "The capital of France is"
N_NEW = 6
OPTS = {"max_new_tokens": N_NEW, "reducer": "neurons", "frame_dtype": "float32", "ignore_eos": True}
#: |a - b| / |b| per token and layer on the full float32 vectors, as tests/backends/test_backends_agree.py
ACT_RTOL = 1e-4
BACKENDS_UNDER_TEST = ("transformer-lens", "nnsight")
TL_POINT = {"resid": "blocks.{l}.hook_resid_post", "attn": "blocks.{l}.hook_attn_out", "mlp": "blocks.{l}.hook_mlp_out"}
NN_MODULE = {"resid": "model.layers.{l}", "attn": "model.layers.{l}.self_attn", "mlp": "model.layers.{l}.mlp"}


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmri.models import LoadedModel, gguf_model_dir
    from llmri.models.identity import default_gguf_path

    tok = AutoTokenizer.from_pretrained(gguf_model_dir(default_gguf_path()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=D, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(model=model, tokenizer=tok, name="tiny-llama-tok", path="", fingerprint="tiny-tok")


_RUNS: dict = {}


@pytest.fixture(scope="module")
def run(tiny):
    """``run(backend, case_or_None)``: the capture, made once per module."""

    def get(backend: str, case: str | None = None, **kw):
        key = (backend, case, tuple(sorted(kw.items())))
        if key not in _RUNS:
            ivs = [] if case is None else [CASES[case][0](_n_prompt(tiny))]
            _RUNS[key] = llmri.capture(tiny, PROMPT, backend=backend, interventions=ivs, **OPTS, **kw)
        return _RUNS[key]

    return get


def _n_prompt(model) -> int:
    return len(model.tokenizer(PROMPT)["input_ids"])


def _vec(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


V = _vec(0)

# name: (record for a prompt of n positions, signal, layer, hand-written edit of h [1, T, D] at positions pos [T])
CASES = {
    "steer-resid-all": (
        lambda n: llmri.steer(V, 1, scale=4.0, positions="all"),
        "resid", 1, lambda h, pos, n: h + 4.0 * torch.from_numpy(V),
    ),
    "steer-attn-generated": (
        lambda n: llmri.steer(V, 2, scale=3.0, signal="attn", positions="generated"),
        "attn", 2, lambda h, pos, n: h + 3.0 * torch.from_numpy(V) * (pos >= n)[None, :, None],
    ),
    "steer-mlp-match-last": (
        lambda n: llmri.steer(V, 0, scale=0.5, signal="mlp", norm="match", positions="last"),
        "mlp", 0,
        lambda h, pos, n: h + 0.5 * h.norm(dim=-1, keepdim=True) * torch.from_numpy(V) * (pos == n - 1)[None, :, None],
    ),
    "ablate-mlp": (lambda n: llmri.ablate(1, "mlp"), "mlp", 1, lambda h, pos, n: torch.zeros_like(h)),
    "ablate-neurons-at-indices": (
        lambda n: llmri.ablate(0, "resid", neurons=[3, 7], positions=[1, n + 1]),
        "resid", 0, lambda h, pos, n: _zero(h, [3, 7], (pos == 1) | (pos == n + 1)),
    ),
    "ablate-direction-prompt": (
        lambda n: llmri.ablate(2, "resid", direction=V, positions="prompt"),
        "resid", 2,
        lambda h, pos, n: h - (h @ torch.from_numpy(V))[..., None] * torch.from_numpy(V) * (pos < n)[None, :, None],
    ),
}  # fmt: skip
#: compared with hf only (their values come from another run): the calibration mean, another prompt's
HF_ONLY = {
    "ablate-mean": (lambda n: llmri.ablate([0, 2], "attn", value="mean"),),
    "patch": (lambda n: llmri.patch("The capital of Italy is", layers=1),),
}
CASES.update(HF_ONLY)  # type: ignore[arg-type]


def _zero(h, neurons, mask):
    h = h.clone()
    for i in neurons:
        h[0, mask, i] = 0.0
    return h


def _rel(a, b):
    """Per (token, layer) relative L2 error of two ``[T, L, ...]`` arrays."""
    a = np.asarray(a, dtype=np.float64).reshape(*np.shape(a)[:2], -1)
    b = np.asarray(b, dtype=np.float64).reshape(*np.shape(b)[:2], -1)
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-6)


def _vectors(session, signal: str, layer: int) -> np.ndarray:
    return session.frames(signal)[:, layer].reshape(len(session), -1)[:, :D]


def _hook_count(module) -> int:
    """Every forward hook on ``module``'s tree: torch's own, and TransformerLens's handle lists."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "fwd_hooks", None) or [])
        for m in module.modules()
    )


def _check_same(a, b, rtol: float = 0.0) -> None:
    assert a.tokens.ids.tolist() == b.tokens.ids.tolist()
    for sig in llmri.SIGNALS:
        if rtol == 0.0:
            assert np.array_equal(a.frames(sig), b.frames(sig)), sig
        else:
            err = _rel(a.frames(sig), b.frames(sig))
            assert err.max() <= rtol, f"{sig}: max relative error {err.max():.2e}"


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("case", list(CASES))
def test_an_intervened_capture_equals_hfs_with_the_same_record(run, backend, case):
    got, ref = run(backend, case), run("hf", case)
    assert got.meta["backend"] == backend and got.meta["interventions"] == ref.meta["interventions"]
    base = run("hf")
    moved = any(not np.array_equal(ref.frames(s), base.frames(s)) for s in llmri.SIGNALS)
    assert moved, "the record should change the run, or the comparison shows nothing"
    _check_same(got, ref, ACT_RTOL)


def _tl_reference(backend, ids, signal, layer, edit, n_prompt):
    """One forward over ``ids`` with ``edit`` by a hook written here, through the bridge's
    ``run_with_hooks``: the logits and the edited hook point's vectors ``[T, D]``."""
    seen = {}

    def hook(t, hook):
        new = edit(t.clone(), torch.arange(t.shape[1]), n_prompt)
        seen["h"] = new.detach().clone()
        return new

    name = TL_POINT[signal].format(l=layer)
    with torch.no_grad():
        logits = backend.bridge.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(name, hook)], return_type="logits")
    return logits[0].float(), seen["h"][0].float().numpy()


def _nn_reference(backend, ids, signal, layer, edit, n_prompt):
    """The same in one nnsight trace, the site's ``.output`` replaced by hand."""
    nn_model = backend.nn_model
    envoy = nn_model
    for part in NN_MODULE[signal].format(l=layer).split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    with torch.no_grad(), nn_model.trace(torch.tensor([ids])):
        if signal == "attn":  # (attn_output, attn_weights)
            out = envoy.output
            new = edit(out[0].clone(), torch.arange(len(ids)), n_prompt)
            envoy.output = (new, out[1])
        else:
            new = edit(envoy.output.clone(), torch.arange(len(ids)), n_prompt)
            envoy.output = new
        h = new.save()
        logits = nn_model.output.logits.save()
    return logits[0].float(), h[0].float().numpy()


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("case", [c for c in CASES if c not in HF_ONLY])
def test_streamed_capture_equals_one_forward_edited_by_a_hand_written_hook(tiny, run, backend, case):
    """Each step over the KV cache edits exactly the positions named: its greedy tokens and the
    edited site's vectors are those of one forward over the whole sequence, edited there."""
    _, signal, layer, edit = CASES[case]
    s = run(backend, case)
    ids, n_prompt = [int(i) for i in s.tokens.ids], _n_prompt(tiny)
    assert n_prompt + 1 < len(ids) == n_prompt + N_NEW
    bk = BACKENDS.get(backend)(tiny)
    before = _hook_count(bk.torch_module())
    reference = _tl_reference if backend == "transformer-lens" else _nn_reference
    logits, h = reference(bk, ids, signal, layer, edit, n_prompt)
    assert _hook_count(bk.torch_module()) == before
    assert logits[n_prompt - 1 : -1].argmax(-1).tolist() == ids[n_prompt:]  # greedy, one pass
    logp = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    np.testing.assert_allclose(s.tokens.logprob[1:], logp, atol=1e-4)
    err = _rel(_vectors(s, signal, layer)[:, None], h[:, None])
    assert err.max() <= ACT_RTOL, f"max relative error {err.max():.2e}"


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_frames_streamed_one_by_one_equal_the_captured_session(tiny, run, backend):
    stream = llmri.stream(tiny, PROMPT, backend=backend, interventions=[CASES["steer-attn-generated"][0](0)], **OPTS)
    frames = list(stream)
    s = run(backend, "steer-attn-generated")
    assert [f.token.id for f in frames] == s.tokens.ids.tolist()
    for sig in llmri.SIGNALS:
        np.testing.assert_array_equal(np.stack([f.tiles[sig] for f in frames]), s.frames(sig))


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_nothing_changed_is_the_baseline_exactly_and_nothing_is_left_on_the_model(tiny, run, backend):
    base = run(backend)
    root = BACKENDS.get(backend)(tiny).torch_module()
    before = _hook_count(root)
    for interventions in (
        [],
        [llmri.steer(V, [0, 2], scale=0.0, positions="all"), llmri.steer(V, 1, scale=0.0, signal="mlp")],
        [llmri.ablate(1, "attn", neurons=[])],
    ):
        _check_same(llmri.capture(tiny, PROMPT, backend=backend, interventions=interventions, **OPTS), base)
    assert _hook_count(root) == before
    run(backend, "steer-resid-all")
    assert _hook_count(root) == before
    _check_same(llmri.capture(tiny, PROMPT, backend=backend, **OPTS), base)  # a plain capture after


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_a_failing_forward_leaves_nothing_on_the_model(tiny, run, backend):
    base = run(backend)
    bk = BACKENDS.get(backend)(tiny)
    root = bk.torch_module()
    before = _hook_count(root)

    def boom(*_a):
        raise RuntimeError("boom")

    h = bk.blocks()[2].register_forward_hook(boom)
    try:
        with pytest.raises(Exception, match="boom"):
            llmri.capture(tiny, PROMPT, backend=backend, interventions=[llmri.steer(V, 1, positions="all")], **OPTS)
    finally:
        h.remove()
    assert _hook_count(root) == before
    _check_same(llmri.capture(tiny, PROMPT, backend=backend, **OPTS), base)


def test_nnsight_refuses_interventions_on_a_remote_model_naming_hf(tiny):
    bk = BACKENDS.get("nnsight")(tiny, remote="local")
    plan = Plan([llmri.steer(V, 1)], n_layers=3, d_model=D, n_prompt=5)
    with pytest.raises(llmri.CaptureError, match="interventions run on a local model only: .*backend='hf'") as e:
        bk.intervene(plan)
    assert "\n" not in str(e.value)
    bk.intervene(None)  # no plan: nothing to refuse


def test_transformer_lens_refuses_a_site_its_bridge_has_no_hook_point_for(tiny, monkeypatch):
    bk = BACKENDS.get("transformer-lens")(tiny)
    points = {k: v for k, v in bk.bridge.hook_dict.items() if k != "blocks.1.hook_mlp_out"}
    monkeypatch.setattr(type(bk.bridge), "hook_dict", property(lambda _self: points))
    bk.intervene(Plan([llmri.steer(V, [0, 2], signal="mlp")], n_layers=3, d_model=D, n_prompt=5))
    with pytest.raises(llmri.CaptureError, match="no hook point 'blocks.1.hook_mlp_out' .*backend='hf'") as e:
        bk.intervene(Plan([llmri.ablate(1, "mlp")], n_layers=3, d_model=D, n_prompt=5))
    assert "\n" not in str(e.value)
