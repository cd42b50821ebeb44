"""One suite, every capture backend (hf, transformer-lens, nnsight), on the real bundled model.

Agreement is checked against the ``hf`` backend. Tolerance (float32 model): for every token and
layer, ``|a - b| / |b| <= 1e-4`` on the unreduced d_model vector (observed: <= 4e-6; TransformerLens
runs its own eager attention, nnsight the same modules as hf), and ``<= 2e-3`` on ``neurons`` frames,
which are stored as float16 (one float16 step is 4.9e-4 relative). Logits within 1e-3 absolute.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

import llmri
from llmri._errors import CaptureError, MissingExtraError
from llmri.backends import BACKENDS

PROMPT = "Why is the sky blue?"
N_NEW = 8
ACT_RTOL = 1e-4
FRAME_RTOL = 2e-3
LOGIT_ATOL = 1e-3
SAMPLING = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}

pytestmark = pytest.mark.slow


def _capture(model, backend, **kw):
    kw.setdefault("max_new_tokens", N_NEW)
    kw.setdefault("reducer", "neurons")
    return llmri.capture(model, PROMPT, chat=True, backend=backend, **kw)


def _rel(a, b):
    """Per (token, layer) relative L2 error of two ``[..., d]`` arrays."""
    a = np.asarray(a, dtype=np.float64).reshape(*np.shape(a)[:2], -1)
    b = np.asarray(b, dtype=np.float64).reshape(*np.shape(b)[:2], -1)
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-6)


def _hook_count(module) -> int:
    """Every forward hook on ``module``'s tree: torch's own, and TransformerLens's handle lists."""
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
        n += len(getattr(m, "fwd_hooks", None) or [])
    return n


_SESSIONS: dict = {}


@pytest.fixture(scope="module")
def sessions(real_model):
    """Captures shared by the suite, made once per (backend, kind)."""

    def get(backend: str, kind: str):
        key = (backend, kind)
        if key not in _SESSIONS:
            extra = {"sampled": SAMPLING, "lens": {"lens": True}}.get(kind, {})
            _SESSIONS[key] = _capture(real_model, backend, **extra)
        return _SESSIONS[key]

    return get


def _steps(capture, ids):
    """Prefill in two chunks (the second on a non-empty cache), then two one-token steps."""
    import torch

    out, cache = [], None
    for chunk in (ids[:5], ids[5:], [42], [1337]):
        st = capture.step(torch.tensor([chunk], dtype=torch.long), cache)
        cache = st.cache
        out.append(st)
    return out


@pytest.fixture(scope="module")
def hf_steps(real_model):
    from llmri.backends.hf import HFBackend

    ids = real_model.tokenizer(PROMPT)["input_ids"] + [28, 330]
    return ids, _steps(HFBackend(real_model), ids)


class BackendSuite:
    """Subclassed once per backend; ``backend`` names it."""

    backend = ""

    def _capture_obj(self, model, signals=llmri.SIGNALS):
        return BACKENDS.get(self.backend)(model, signals)

    def _torch_root(self, capture):
        """The torch module tree the backend runs (where hooks would be left behind)."""
        return capture.torch_module()

    def _baseline(self, capture) -> int:
        """Hooks on the backend's module tree after one step: a TransformerBridge installs some
        of its own on its first forward (a plain ``bridge(ids)`` does too)."""
        import torch

        capture.step(torch.tensor([[1]], dtype=torch.long))
        return _hook_count(self._torch_root(capture))

    def _layer(self, capture, i):
        return capture.blocks()[i]

    def test_names_its_torch_module_and_one_block_per_layer(self, real_model):
        cap = self._capture_obj(real_model)
        blocks = cap.blocks()
        assert len(blocks) == cap.n_layers == 30
        owned = {id(m) for m in cap.torch_module().modules()}
        assert all(id(b) in owned for b in blocks) and len({id(b) for b in blocks}) == 30

    def _skip_reference(self):
        if self.backend == "hf":
            pytest.skip("hf is the reference (its parity with output_hidden_states is in test_capture.py)")

    # -- same tokens -------------------------------------------------------------------------

    def test_greedy_tokens_match_hf(self, sessions):
        s = sessions(self.backend, "greedy")
        assert s.meta["backend"] == self.backend
        assert s.meta["stop_reason"] in ("max_new_tokens", "eos")
        gen = [r for r in s.tokens.role if r == "generated"]
        assert len(gen) == N_NEW
        self._skip_reference()
        ref = sessions("hf", "greedy")
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
        assert s.text == ref.text

    def test_seeded_sampling_tokens_match_hf(self, sessions):
        s = sessions(self.backend, "sampled")
        greedy = sessions(self.backend, "greedy")
        assert s.tokens.ids.tolist() != greedy.tokens.ids.tolist(), "sampling should leave the greedy path"
        self._skip_reference()
        assert s.tokens.ids.tolist() == sessions("hf", "sampled").tokens.ids.tolist()

    def test_logprobs_match_hf(self, sessions):
        self._skip_reference()
        s, ref = sessions(self.backend, "greedy"), sessions("hf", "greedy")
        np.testing.assert_allclose(s.tokens.logprob[1:], ref.tokens.logprob[1:], atol=LOGIT_ATOL)
        assert s.tokens.top_ids[1:].tolist() == ref.tokens.top_ids[1:].tolist()

    def test_lens_matches_hf(self, sessions):
        """``lens=True``: at the last layer the lens is the model's own next-token distribution
        (top-1 the greedy token, ``next_prob`` the next token's probability), and every layer's
        lens equals hf's (each backend's ``lens_head`` on its own ``resid``)."""
        s = sessions(self.backend, "lens")
        lens, t = s.lens(), s.tokens
        assert lens.top_ids.shape == (len(t), 30, 5)
        assert lens.top_ids[:-1, -1, 0].tolist() == t.top_ids[1:, 0].tolist()
        np.testing.assert_allclose(lens.next_prob[:-1, -1], np.exp(t.logprob[1:]), atol=2e-5)
        assert np.isnan(lens.next_prob[-1]).all()
        assert s.tokens.ids.tolist() == sessions(self.backend, "greedy").tokens.ids.tolist()
        self._skip_reference()
        ref = sessions("hf", "lens").lens()
        same = lens.top_ids == ref.top_ids
        assert same[..., 0].mean() > 0.99 and same.mean() > 0.99
        np.testing.assert_allclose(lens.top_probs, ref.top_probs, atol=1e-4)
        np.testing.assert_allclose(lens.next_prob, ref.next_prob, atol=1e-4)

    # -- same activations --------------------------------------------------------------------

    def test_unreduced_activations_match_hf(self, real_model, hf_steps):
        ids, ref = hf_steps
        cap = self._capture_obj(real_model)
        assert cap.n_layers == 30 and cap.d_model == 576
        got = _steps(cap, ids)
        assert [g.acts["resid"].shape[0] for g in got] == [5, len(ids) - 5, 1, 1]
        for j, (g, r) in enumerate(zip(got, ref, strict=True)):
            assert g.cache is not None
            for sig in llmri.SIGNALS:
                a, b = g.acts[sig], r.acts[sig]
                assert tuple(a.shape) == tuple(b.shape) == (b.shape[0], 30, 576)
                err = _rel(a.float().numpy(), b.float().numpy())
                assert err.max() <= ACT_RTOL, f"step {j} {sig}: max relative error {err.max():.2e}"
            assert float((g.logits - r.logits).abs().max()) <= LOGIT_ATOL
        # the cache really holds the positions: the last step saw all of them
        assert got[-1].cache.get_seq_length() == len(ids) + 2

    def test_neurons_frames_match_hf(self, sessions):
        s = sessions(self.backend, "greedy")
        assert s.frames("resid").shape == (len(s.tokens), 30, 24, 24)
        self._skip_reference()
        ref = sessions("hf", "greedy")
        assert s.meta["model"]["fingerprint"] == ref.meta["model"]["fingerprint"]
        for sig in llmri.SIGNALS:
            err = _rel(s.frames(sig), ref.frames(sig))
            assert err.max() <= FRAME_RTOL, f"{sig}: max relative error {err.max():.2e}"
            np.testing.assert_allclose(s.stats(sig)[0], ref.stats(sig)[0], rtol=1e-3)

    def test_signal_subset(self, real_model, hf_steps):
        ids, ref = hf_steps
        cap = self._capture_obj(real_model, ["mlp"])
        got = _steps(cap, ids)
        assert set(got[0].acts) == {"mlp"}
        assert _rel(got[3].acts["mlp"].numpy(), ref[3].acts["mlp"].numpy()).max() <= ACT_RTOL

    # -- nothing left behind -----------------------------------------------------------------

    def test_no_hooks_left_after_normal_end(self, real_model):
        cap = self._capture_obj(real_model)
        root = self._torch_root(cap)
        before = self._baseline(cap)
        # not 0: transformers' own output_hidden_states hooks stay on a model once another test used them
        on_model = _hook_count(real_model.model)
        s = _capture(real_model, self.backend, max_new_tokens=2)
        assert s.meta["stop_reason"] == "max_new_tokens"
        assert _hook_count(root) == before
        assert _hook_count(real_model.model) == on_model

    def test_early_close_leaves_model_clean(self, real_model, sessions):
        cap = self._capture_obj(real_model)
        root = self._torch_root(cap)
        before = self._baseline(cap)
        st = llmri.stream(real_model, PROMPT, chat=True, backend=self.backend, reducer="neurons", max_new_tokens=N_NEW)
        frames = iter(st)
        n_prompt = sum(1 for r in sessions("hf", "greedy").tokens.role if r == "prompt")
        got = [next(frames) for _ in range(n_prompt + 2)]
        frames.close()
        st.close()
        assert got[-1].token.role == "generated"
        assert st.stop_reason == "closed"
        assert _hook_count(root) == before
        again = _capture(real_model, self.backend, max_new_tokens=3)
        assert again.tokens.ids.tolist() == sessions("hf", "greedy").tokens.ids.tolist()[: len(again.tokens)]

    def test_exception_mid_generation_leaves_model_clean(self, real_model, sessions):
        cap = self._capture_obj(real_model)
        root = self._torch_root(cap)
        before = self._baseline(cap)
        calls = {"n": 0}

        def boom(_mod, _inp, _out):
            calls["n"] += 1
            calls["hooks"] = _hook_count(root)
            if calls["n"] == 3:  # prefill, first generated token, then fail inside the forward
                raise RuntimeError("boom in layer 7")

        h = self._layer(cap, 7).register_forward_hook(boom)
        try:
            with pytest.raises(Exception, match="boom in layer 7"):
                _capture(real_model, self.backend)
        finally:
            h.remove()
        assert calls["n"] == 3
        if self.backend != "nnsight":  # nnsight intervenes through its own forwards, not hooks
            assert calls["hooks"] > before + 1, "the backend's hooks should be there mid-forward"
        assert _hook_count(root) == before
        again = _capture(real_model, self.backend, max_new_tokens=3)
        assert again.tokens.ids.tolist() == sessions("hf", "greedy").tokens.ids.tolist()[: len(again.tokens)]

    # -- errors ------------------------------------------------------------------------------

    def test_signal_the_backend_cannot_provide(self, real_model):
        cls = BACKENDS.get(self.backend)
        resid_only = type("ResidOnly", (cls,), {"provides": ("resid",), "name": self.backend})
        with pytest.raises(CaptureError, match=f"backend '{self.backend}' cannot capture signal 'mlp'"):
            resid_only(real_model, ["resid", "mlp"])
        with pytest.raises(CaptureError, match="unknown signal 'logits'"):
            llmri.capture(real_model, PROMPT, backend=self.backend, signals="resid,logits", max_new_tokens=1)


class TestHF(BackendSuite):
    backend = "hf"


class TestTransformerLens(BackendSuite):
    backend = "transformer-lens"


class TestNNsight(BackendSuite):
    backend = "nnsight"


# -- what only some backends have -----------------------------------------------------------


def test_hf_missing_signal_mapping_names_signal_and_module(real_model):
    bad = {"mlp": "model.layers.{i}.feed_forward"}
    with pytest.raises(CaptureError, match=r"no mapping for signal 'mlp'.*model\.layers\.0\.feed_forward"):
        llmri.capture(real_model, PROMPT, backend="hf", max_new_tokens=1, hook_points=bad)
    with pytest.raises(CaptureError, match=r"no mapping for signal 'mlp'.*model\.layers\.0\.feed_forward"):
        llmri.capture(real_model, PROMPT, backend="nnsight", max_new_tokens=1, hook_points=bad)


def test_tl_missing_hook_point_names_signal_and_hook(real_model, monkeypatch):
    import llmri.backends.transformer_lens as tl

    monkeypatch.setitem(tl.HOOK_POINTS, "attn", "blocks.{i}.hook_attention_output")
    with pytest.raises(CaptureError, match=r"no mapping for signal 'attn'.*'blocks\.0\.hook_attention_output'"):
        llmri.capture(real_model, PROMPT, backend="transformer-lens", max_new_tokens=1)


@pytest.mark.parametrize(("module", "backend"), [("transformer_lens", "transformer-lens"), ("nnsight", "nnsight")])
def test_missing_extra_is_a_clear_error(real_model, monkeypatch, module, backend):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingExtraError, match=rf"pip install 'llmri\[{backend}\]'"):
        llmri.capture(real_model, PROMPT, backend=backend, max_new_tokens=1)
    from llmri.cli import main

    assert main(["backends"]) == 0


def test_backends_command_lists_installed(capsys, monkeypatch):
    from llmri.cli import main

    assert main(["backends"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["transformer-lens"][:2] == ["yes", "resid,attn,mlp"]
    assert rows["nnsight"][:2] == ["yes", "resid,attn,mlp"]
    monkeypatch.setitem(sys.modules, "nnsight", None)
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'llmri[nnsight]'" in out
    assert "llmri[transformer-lens]" not in out


def test_import_llmri_does_not_import_the_extras():
    code = "import sys, llmri, llmri.backends; print('transformer_lens' in sys.modules, 'nnsight' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_capture_accepts_a_bridge_the_user_booted(real_model, sessions):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(real_model.path, device="cpu")
    bridge(real_model.tokenizer("Hi", return_tensors="pt")["input_ids"])  # TL adds its own hooks on a first forward
    before = _hook_count(bridge)
    s = llmri.capture(bridge, PROMPT, chat=True, max_new_tokens=N_NEW, reducer="neurons")
    ref = sessions("hf", "greedy")
    assert s.meta["backend"] == "transformer-lens"
    assert s.meta["model"]["fingerprint"] == real_model.fingerprint  # same weights, same fingerprint
    assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
    assert _rel(s.frames("resid"), ref.frames("resid")).max() <= FRAME_RTOL
    assert _hook_count(bridge) == before
    with pytest.raises(CaptureError, match="wrapped for the 'transformer-lens' backend"):
        llmri.capture(bridge, PROMPT, backend="hf", max_new_tokens=1)


def test_capture_accepts_an_nnsight_model_the_user_wrapped(real_model, sessions):
    from nnsight.modeling.transformers import TransformersModel

    nn_model = TransformersModel(copy.deepcopy(real_model.model), tokenizer=real_model.tokenizer)
    s = llmri.capture(nn_model, PROMPT, chat=True, max_new_tokens=N_NEW, reducer="neurons", **SAMPLING)
    assert s.meta["backend"] == "nnsight"
    assert s.meta["model"]["fingerprint"] == real_model.fingerprint
    assert s.tokens.ids.tolist() == sessions("hf", "sampled").tokens.ids.tolist()


def test_nnsight_remote_path_up_to_the_network(real_model, sessions, monkeypatch):
    """``remote`` reaches nnsight's remote machinery. ``"local"`` serializes each trace as a
    remote request would and runs it here; a remote run needs a hub-named model; a real host is
    refused at the network boundary (there is no network here, and nothing listens on the port)."""
    from nnsight.modeling import huggingface as nn_hf
    from nnsight.modeling.transformers import TransformersModel

    from llmri.backends import nnsight as nnsight_backend

    nn_model = TransformersModel(copy.deepcopy(real_model.model), tokenizer=real_model.tokenizer)
    local = nnsight_backend.wrap(nn_model, remote="local")
    s = llmri.capture(local, PROMPT, chat=True, max_new_tokens=3, reducer="neurons")
    assert s.tokens.ids.tolist() == sessions("hf", "greedy").tokens.ids.tolist()[: len(s.tokens)]

    with pytest.raises(CaptureError, match="hub id"):
        llmri.capture(nnsight_backend.wrap(nn_model, remote=True), PROMPT, max_new_tokens=1)

    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setattr(nn_model, "repo_id", repo)
    monkeypatch.setitem(nn_hf._ID_CACHE, repo, repo)  # nnsight would ask the hub to canonicalize the id
    far = nnsight_backend.wrap(nn_model, remote="http://127.0.0.1:9")
    cap = nnsight_backend.NNsightBackend(far, ["resid"])
    ids = real_model.tokenizer("hi", return_tensors="pt")["input_ids"]
    assert cap._trace_kwargs(ids, None)["remote"] == "http://127.0.0.1:9"
    with pytest.raises(Exception, match=r"127\.0\.0\.1|[Cc]onnect|refused|[Ff]ailed to send"):
        llmri.capture(far, PROMPT, chat=True, max_new_tokens=1)
    assert _hook_count(nn_model._module) == 0
    again = llmri.capture(nn_model, PROMPT, chat=True, max_new_tokens=2, reducer="neurons")
    assert again.tokens.ids.tolist() == sessions("hf", "greedy").tokens.ids.tolist()[: len(again.tokens)]


def test_loaded_model_is_left_untouched_by_the_other_backends(real_model, sessions):
    """The bridge and the nnsight wrapper run on a copy: the LoadedModel's own modules keep
    their forwards and attention implementation, so hf records the same as before."""
    sessions("transformer-lens", "greedy")
    sessions("nnsight", "greedy")
    hf_model = real_model.model
    assert all("forward" not in vars(m) for m in hf_model.modules())
    assert not hf_model.config.output_attentions  # TransformerLens sets it on the model it wraps
    assert type(hf_model.model.layers[0]).__name__ == "LlamaDecoderLayer"
    s = _capture(real_model, "hf", max_new_tokens=3)
    assert s.tokens.ids.tolist() == sessions("hf", "greedy").tokens.ids.tolist()[: len(s.tokens)]
