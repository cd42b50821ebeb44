"""Reducers: JL distance preservation, IPCA against a float64 reference, lossless neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmri import ReducerError, make_reducer
from llmri._registry import Registry
from llmri.reducers.base import parse_tile
from llmri.reducers.ipca import TorchIncrementalPCA
from llmri.reducers.neurons import fold_shape


def _structured(n: int, layers: int, d: int, rank: int = 40, seed: int = 0) -> torch.Tensor:
    """Activations with a decaying spectrum, like a real residual stream."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(layers, rank, d, generator=g)
    coef = torch.randn(n, layers, rank, generator=g) * torch.linspace(10, 0.5, rank)
    noise = 0.1 * torch.randn(n, layers, d, generator=g)
    return torch.einsum("nlr,lrd->nld", coef, basis) + noise + 3.0


@pytest.mark.parametrize("per_layer", [False, True])
def test_random_projection_preserves_pairwise_distances(per_layer):
    r = make_reducer("random", tile="16x16", seed=3, per_layer=per_layer)
    r.setup(n_layers=2, d_model=576)
    x = _structured(60, 2, 576)
    y = r.transform(x, "resid").reshape(60, 2, -1)
    k = 256
    for layer in range(2):
        dx = torch.cdist(x[:, layer], x[:, layer])
        dy = torch.cdist(y[:, layer], y[:, layer])
        iu = torch.triu_indices(60, 60, 1)
        ratio = (dy[iu[0], iu[1]] / dx[iu[0], iu[1]]) ** 2
        # JL (Dasgupta-Gupta): k >= 4 ln(n) / (eps^2/2 - eps^3/3) keeps every squared distance within 1 +- eps
        eps = next(e / 1000 for e in range(1, 1000) if (e / 1000) ** 2 / 2 - (e / 1000) ** 3 / 3 >= 4 * np.log(60) / k)
        assert float((ratio - 1).abs().max()) < eps
        # and most pairs are much closer: the ratio's std is sqrt(2/k)
        assert float((ratio - 1).abs().quantile(0.95)) < 2.5 * (2 / k) ** 0.5
        assert abs(float(ratio.mean()) - 1) < 0.05


def test_random_projection_is_deterministic_per_seed():
    x = _structured(5, 3, 64)
    a, b, c = (make_reducer("random", tile=(4, 4), seed=s) for s in (1, 1, 2))
    for r in (a, b, c):
        r.setup(3, 64, "fp")
    assert torch.equal(a.transform(x, "resid"), b.transform(x, "resid"))
    assert not torch.equal(a.transform(x, "resid"), c.transform(x, "resid"))
    assert a.spec == b.spec and a.spec["seed"] == 1 and a.spec["model_fingerprint"] == "fp"
    assert a.spec["per_layer"] is False


def test_random_projection_shared_or_per_layer():
    x = torch.randn(4, 1, 64).expand(4, 3, 64).contiguous()  # the same vector in every layer
    shared = make_reducer("random", tile=(4, 4), seed=1)
    own = make_reducer("random", tile=(4, 4), seed=1, per_layer=True)
    for r in (shared, own):
        r.setup(3, 64)
    ys, yo = shared.transform(x, "resid"), own.transform(x, "resid")
    assert torch.equal(ys[:, 0], ys[:, 2])  # one space for all layers: same vector, same picture
    assert not torch.allclose(yo[:, 0], yo[:, 2])
    many = shared.transform_many({"resid": x, "mlp": 2 * x})
    torch.testing.assert_close(many["mlp"], 2 * ys)


def _reference_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    cov = np.cov(x, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    return evals[order] / np.trace(cov), evecs[:, order].T


@pytest.mark.parametrize("method", ["cov", "svd"])
def test_ipca_explained_variance_matches_float64_reference(method):
    x = _structured(3000, 2, 96)
    pca = TorchIncrementalPCA(16, method=method)
    for i in range(0, 3000, 500):
        pca.partial_fit(x[i : i + 500].transpose(0, 1))
    for layer in range(2):
        ratio, comps = _reference_pca(x[:, layer].numpy(), 16)
        got = pca.explained_variance_ratio[layer].numpy()
        if method == "cov":  # exact PCA of everything seen
            np.testing.assert_allclose(got, ratio, rtol=1e-4)
        else:  # Ross et al.'s update truncates to k each batch: the leading components stay within 1%
            np.testing.assert_allclose(got[:8], ratio[:8], rtol=1e-2)
            np.testing.assert_allclose(got, ratio, rtol=3e-2)
        # the same subspace: |cos| between matching components close to 1 where eigenvalues are distinct
        cos = np.abs((pca.components[layer].double().numpy() * comps).sum(-1))
        assert cos[:8].min() > 0.99


def test_ipca_reducer_fit_transform_and_state_roundtrip():
    x = _structured(800, 3, 64)
    r = make_reducer("ipca", tile="4x4")
    r.setup(3, 64, "fp")
    r.fit({"resid": x})
    y = r.transform(x[:10], "resid")
    assert y.shape == (10, 3, 4, 4)
    # the first component carries the most variance
    var = y.reshape(10, 3, 16).var(dim=0)
    assert (var[:, 0] >= var[:, 5]).all()
    r2 = make_reducer("ipca", tile="4x4")
    r2.setup(3, 64, "fp")
    r2.load_state_dict(r.state_dict())
    torch.testing.assert_close(r2.transform(x[:10], "resid"), y)
    assert r.explained_variance_ratio("resid").shape == (3, 16)
    with pytest.raises(ReducerError, match="not fitted for signal 'mlp'"):
        r.transform(x[:2], "mlp")
    too_few = make_reducer("ipca", tile="16x16")
    too_few.setup(3, 64)
    with pytest.raises(ReducerError, match="calibration tokens"):
        too_few.fit({"resid": x[:10]})


def test_neurons_round_trip_exactly():
    x = torch.randn(7, 4, 576)
    r = make_reducer("neurons")
    r.setup(4, 576)
    assert r.tile == (24, 24)
    y = r.transform(x, "resid")
    assert torch.equal(y.reshape(7, 4, -1), x)
    r = make_reducer("neurons")
    r.setup(4, 577)
    y = r.transform(torch.randn(2, 4, 577), "resid")
    assert y.shape[-2:] == (25, 25) and r.spec["n_values"] == 577


def test_fold_shape():
    assert fold_shape(576) == (24, 24)
    assert fold_shape(8192) == (64, 128)
    assert fold_shape(768) == (24, 32)
    h, w = fold_shape(4099)  # prime: padded square
    assert h == w and h * w >= 4099


def test_neurons_refuses_a_tile_too_small():
    r = make_reducer("neurons", tile="8x8")
    with pytest.raises(ReducerError, match="fewer than d_model=576"):
        r.setup(2, 576)


@pytest.mark.parametrize("bad", ["16by16", "0x4", "4x4x4", "x", (1,), "2000x2"])
def test_bad_tile_shapes(bad):
    with pytest.raises(ReducerError, match="bad tile shape"):
        parse_tile(bad)


def test_tile_forms():
    assert parse_tile("16x8") == (16, 8) and parse_tile(12) == (12, 12) and parse_tile([3, 5]) == (3, 5)


def test_wrong_activation_shape_is_refused():
    r = make_reducer("random")
    r.setup(3, 64)
    with pytest.raises(ReducerError, match=r"expected activations \[n, 3, 64\]"):
        r.transform(torch.zeros(2, 3, 65), "resid")


def test_registry_refuses_duplicates():
    reg: Registry[object] = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(object)
