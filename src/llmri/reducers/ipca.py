"""``ipca``: incremental PCA per layer (and per signal) in torch, fitted once and then frozen."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import ReducerError
from .base import REDUCERS, Reducer

# Above this d_model a d x d scatter matrix per layer is too big; use the SVD-merge update instead.
_COV_MAX_D = 2048


class TorchIncrementalPCA:
    """Incremental PCA for ``L`` independent problems at once (one per layer).

    ``partial_fit(x)`` takes ``[L, n, d]`` batches. Two exact-in-the-limit update rules:

    - ``"cov"`` (``d <= 2048``): merges each batch's centred scatter matrix (float32 matmul,
      float64 accumulation, Chan et al.'s pairwise update), then one batched ``eigh`` at the end.
      Exact PCA of everything seen, O(d^2) memory per layer.
    - ``"svd"``: Ross et al.'s update (as scikit-learn's IncrementalPCA): SVD of the previous
      components, the centred batch and a mean-correction row. O(k d) memory per layer.
    """

    def __init__(self, n_components: int, method: str = "auto") -> None:
        self.k = int(n_components)
        self.method = method
        self.n = 0
        self.mean: Any = None  # [L, d] float64
        self._scatter: Any = None  # cov: [L, d, d] float64
        self._sv: Any = None  # svd: [L, k]
        self._var_sum: Any = None  # svd: [L] total variance numerator
        self.components: Any = None  # [L, k, d]
        self.explained_variance: Any = None  # [L, k]
        self.explained_variance_ratio: Any = None  # [L, k]

    def partial_fit(self, x: Any) -> TorchIncrementalPCA:
        import torch

        if x.ndim != 3:
            raise ReducerError(f"ipca: expected [layers, n, d], got {tuple(x.shape)}")
        L, b, d = x.shape
        if self.method == "auto":
            self.method = "cov" if d <= _COV_MAX_D else "svd"
        if self.k > d:
            raise ReducerError(f"ipca: {self.k} components need d_model >= {self.k}, got {d}")
        x = x.detach().to(torch.float32)
        bmean = x.mean(dim=1, dtype=torch.float64)  # [L, d]
        xc = x - bmean.to(torch.float32)[:, None, :]
        if self.mean is None:
            self.mean = torch.zeros(L, d, dtype=torch.float64)
        n_old, n_new = self.n, self.n + b
        delta = bmean - self.mean
        if self.method == "cov":
            scatter_b = (xc.transpose(1, 2) @ xc).to(torch.float64)
            corr = (n_old * b / n_new) * (delta[:, :, None] * delta[:, None, :])
            self._scatter = scatter_b + corr if self._scatter is None else self._scatter + scatter_b + corr
        else:
            if b < self.k and self._sv is None:
                raise ReducerError(f"ipca: the first batch needs at least {self.k} vectors, got {b}")
            var_b = (xc.to(torch.float64) ** 2).sum(dim=(1, 2))
            var_corr = (n_old * b / n_new) * (delta**2).sum(dim=1)
            self._var_sum = var_b + var_corr if self._var_sum is None else self._var_sum + var_b + var_corr
            if self._sv is None:
                stack = xc
            else:
                mc = ((n_old * b / n_new) ** 0.5 * delta).to(torch.float32)[:, None, :]
                stack = torch.cat([self._sv[:, :, None] * self.components, xc, mc], dim=1)
            _, s, vt = torch.linalg.svd(stack, full_matrices=False)
            vt = _flip(vt)
            self._sv, self.components = s[:, : self.k], vt[:, : self.k]
        self.mean = self.mean + delta * (b / n_new)
        self.n = n_new
        self._finish()
        return self

    def _finish(self) -> None:
        import torch

        if self.n < 2:
            return
        if self.method == "cov":
            cov = self._scatter / (self.n - 1)
            evals, evecs = torch.linalg.eigh(cov)  # ascending
            evals = evals.flip(-1)[:, : self.k].clamp_min(0)
            comps = evecs.flip(-1)[:, :, : self.k].transpose(1, 2)
            self.components = _flip(comps).to(torch.float32)
            self.explained_variance = evals
            total = torch.diagonal(cov, dim1=1, dim2=2).sum(-1)
        else:
            self.explained_variance = self._sv.to(torch.float64) ** 2 / (self.n - 1)
            total = self._var_sum / (self.n - 1)
        self.explained_variance_ratio = self.explained_variance / total[:, None].clamp_min(1e-30)

    def transform(self, x: Any) -> Any:
        """``[L, n, d]`` -> ``[L, n, k]``."""
        m = self.mean.to(x.dtype)
        return (x - m[:, None, :]) @ self.components.to(x.dtype).transpose(1, 2)


def _flip(vt: Any) -> Any:
    """Deterministic signs: the largest-magnitude entry of each component is positive."""
    import torch

    idx = vt.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(vt, -1, idx))
    signs[signs == 0] = 1
    return vt * signs


@REDUCERS.register("ipca")
class IncrementalPCAReducer(Reducer):
    """Per layer and signal, the top ``H*W`` principal components of calibration activations.

    Fitted on the calibration text shipped with llmri (or text the caller gives), then frozen for
    the session; the state is cached per model fingerprint and spec and saved with each session.
    """

    kind = "ipca"
    supports_fit = True

    def __init__(self, tile: Any = None, seed: int = 0, batch_size: int = 512) -> None:
        super().__init__(tile, seed)
        self.batch_size = int(batch_size)
        self._pca: dict[str, TorchIncrementalPCA] = {}
        self.calibration: str = "builtin"

    @property
    def spec(self) -> dict[str, Any]:
        return {**super().spec, "calibration": self.calibration}

    @property
    def fitted(self) -> bool:
        return bool(self._pca)

    def fit(self, acts: dict[str, Any]) -> None:
        k = self.tile[0] * self.tile[1]
        for signal, x in acts.items():
            self._check(x)
            if x.shape[0] < k:
                raise ReducerError(
                    f"ipca: fitting {k} components needs at least {k} calibration tokens, got {x.shape[0]}"
                )
            pca = TorchIncrementalPCA(k)
            xl = x.transpose(0, 1)  # [L, n, d]
            bs = max(self.batch_size, k)
            for i in range(0, xl.shape[1], bs):
                chunk = xl[:, i : i + bs]
                if chunk.shape[1] < 2:
                    continue
                pca.partial_fit(chunk)
            self._pca[signal] = pca

    def transform(self, x: Any, signal: str) -> Any:
        self._check(x)
        pca = self._pca.get(signal)
        if pca is None:
            raise ReducerError(f"ipca: not fitted for signal {signal!r}")
        y = pca.transform(x.float().transpose(0, 1)).transpose(0, 1)
        return y.reshape(x.shape[0], self.n_layers, *self.tile)

    def explained_variance_ratio(self, signal: str) -> np.ndarray:
        out: np.ndarray = self._pca[signal].explained_variance_ratio.cpu().numpy()
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for s, p in self._pca.items():
            out[f"{s}.mean"] = p.mean.cpu().numpy()
            out[f"{s}.components"] = p.components.cpu().numpy().astype(np.float32)
            out[f"{s}.explained_variance"] = p.explained_variance.cpu().numpy()
            out[f"{s}.explained_variance_ratio"] = p.explained_variance_ratio.cpu().numpy()
            out[f"{s}.n_samples"] = np.array([p.n], dtype=np.int64)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        import torch

        k = self.tile[0] * self.tile[1]
        signals = sorted({key.split(".")[0] for key in state})
        for s in signals:
            p = TorchIncrementalPCA(k)
            p.mean = torch.from_numpy(np.asarray(state[f"{s}.mean"], dtype=np.float64))
            p.components = torch.from_numpy(np.asarray(state[f"{s}.components"], dtype=np.float32))
            p.explained_variance = torch.from_numpy(np.asarray(state[f"{s}.explained_variance"]))
            p.explained_variance_ratio = torch.from_numpy(np.asarray(state[f"{s}.explained_variance_ratio"]))
            p.n = int(np.asarray(state[f"{s}.n_samples"]).reshape(-1)[0])
            self._pca[s] = p
