"""One normalised sparse autoencoder, whatever file it came from: its weights and its encode.

torch is imported by the functions that compute, so that ``import llmri`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...interventions import Direction

#: What an SAE's features are, from its pre-activations ``pre = (x - b_dec?) @ W_enc + b_enc``:
#: ``relu`` relu(pre); ``jumprelu`` relu(pre) where pre > threshold (SAELens's JumpReLU, Gemma Scope);
#: ``topk`` the ``k`` largest pre, relu'd, the rest 0; ``batchtopk`` trained with a batch-wide top-k,
#: run as SAELens runs it at inference: a JumpReLU with the learned global threshold.
ARCHITECTURES: tuple[str, ...] = ("relu", "jumprelu", "topk", "batchtopk")
#: SAELens's input normalisations that act at run time (``expected_average_only_in`` and
#: ``covariance_whitening`` are folded into the weights when SAELens saves an SAE: ``none`` here).
#: ``constant_norm_rescale``: x * sqrt(d_in) / |x|, undone on the output; ``layer_norm``:
#: (x - mean) / (std + 1e-5) (std with Bessel's correction, as torch's), undone on the output.
NORMALISATIONS: tuple[str, ...] = ("none", "constant_norm_rescale", "layer_norm")
_LN_EPS = 1e-5


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder llmri can run: the weights (float32 torch tensors) and what they read.

    ``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, ``W_dec`` ``[d_sae, d_in]``, ``b_dec``
    ``[d_in]``, ``threshold`` ``[d_sae]`` (jumprelu, batchtopk), ``k`` (topk). Decoder-norm
    rescaling (SAELens's ``rescale_acts_by_decoder_norm``) is folded into the weights at load, so
    every architecture encodes with the same formula. ``layer`` and ``signal`` say which of llmri's
    vectors it reads (``None``: unknown, to be given); ``hook_name`` is what its files said;
    ``source_format`` the loader that read it; ``path`` the file or directory.

    ``encode`` / ``top_k`` / ``reconstruction`` take ``x`` ``[..., d_in]`` of any float dtype on any
    device, compute in float32 there (the weights move to ``x``'s device on first use) and return
    tensors on that device.
    """

    W_enc: Any
    b_enc: Any
    W_dec: Any
    b_dec: Any
    architecture: str
    name: str
    source_format: str
    path: str
    threshold: Any = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    layer: int | None = None
    signal: str | None = None
    hook_name: str | None = None
    model_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: A transcoder (circuit-tracer's per-layer ones): it reads layer ``layer``'s MLP *input* and
    #: writes its output, so a capture records it from the MLP's input (``mlp`` recorded at the
    #: MLP's input norm) and has no reconstruction error to give (NaN): docs/sae.md.
    transcoder: bool = False

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def __repr__(self) -> str:
        site = f"{self.signal}{self.layer}" if self.signal is not None else "site unknown"
        arch = self.architecture + (f" k={self.k}" if self.k is not None else "")
        return f"<SAE {self.name} {arch} {self.d_in}->{self.d_sae} {site} ({self.source_format})>"

    def check_model(self, d_model: int, n_layers: int, signals: tuple[str, ...] | None = None) -> None:
        """Raise :class:`~llmri.SAEError` (one line) unless this SAE can read a model of ``n_layers``
        blocks of width ``d_model`` recording ``signals``: checked before any generation."""
        from ..._errors import SAEError

        where = f"SAE {self.name} ({self.path})"
        if self.signal is None or self.layer is None:
            raise SAEError(f"{where}: its files name no layer and signal; load it with layer= and signal=")
        if self.d_in != d_model:
            raise SAEError(f"{where}: reads vectors of {self.d_in}, the model's are {d_model} wide")
        if not 0 <= self.layer < n_layers:
            raise SAEError(f"{where}: reads layer {self.layer}, the model has layers 0-{n_layers - 1}")
        if signals is not None and self.signal not in signals:
            raise SAEError(f"{where}: reads {self.signal}, which this capture does not record ({', '.join(signals)})")

    def check_model_name(self, model_name: str | None) -> None:
        """Raise :class:`~llmri.SAEError` (one line) where this SAE's files name another model than
        ``model_name`` (compared by their last path part, lower-case, either containing the other:
        ``gemma-2-2b`` fits ``google/gemma-2-2b-it``). Unknown on either side: nothing to check;
        ``sae.model_name = None`` skips it for an SAE you know fits."""
        from ..._errors import SAEError

        def norm(x: str) -> str:
            return x.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()

        if not self.model_name or not model_name:
            return
        a, b = norm(self.model_name), norm(model_name)
        if a not in b and b not in a:
            raise SAEError(
                f"SAE {self.name} ({self.path}): trained on {self.model_name}, the model is {model_name} "
                "(set sae.model_name = None to use it anyway)"
            )

    def sha256(self) -> str:
        """The SHA-256 of the weights as llmri runs them (float32 ``W_enc``, ``b_enc``, ``W_dec``,
        ``b_dec``, ``threshold``, after the load's folding): the same SAE gives the same hash whatever
        file it came from; computed once."""
        cached = self.meta.get("sha256")
        if isinstance(cached, str):
            return cached
        import hashlib

        h = hashlib.sha256()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, name)
            if t is not None:
                h.update(name.encode())
                h.update(t.detach().to("cpu").float().contiguous().numpy().tobytes())
        self.meta["sha256"] = out = h.hexdigest()
        return out

    def record(self) -> dict[str, Any]:
        """What a session keeps of this SAE (``meta["sae"]["saes"]``, docs/FORMAT.md): name, format,
        architecture, ``d_in``, ``d_sae``, layer, signal, hook, path, model name, ``k`` (topk), the
        weights' ``sha256`` and its labels (``{feature: text}``, where it has any)."""
        out: dict[str, Any] = {
            "name": self.name,
            "format": self.source_format,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "layer": self.layer,
            "signal": self.signal,
            "hook": self.hook_name,
            "path": self.path,
            "model_name": self.model_name,
            "sha256": self.sha256(),
        }
        if self.k is not None:
            out["k"] = int(self.k)
        if self.transcoder:
            out["transcoder"] = True
        if self.labels:
            out["labels"] = {str(i): t for i, t in sorted(self.labels.items())}
        return out

    @property
    def labels(self) -> dict[int, str]:
        """``{feature: text}``: the features' labels (:meth:`with_labels`), empty without."""
        labels = self.meta.get("labels")
        return labels if isinstance(labels, dict) else {}

    def with_labels(self, labels: Any) -> SAE:
        """Give the features labels, offline: a file path (Neuronpedia's export, ``[{"index",
        "description"}]`` or its JSON Lines, or ``{index: text}`` JSON) or a mapping ``{index: text}``;
        returns this SAE. An index outside ``0..d_sae-1`` is one :class:`~llmri.SAEError` line."""
        from collections.abc import Mapping

        from .labels import labels_from, read_labels

        if isinstance(labels, Mapping):
            self.meta["labels"] = labels_from(labels.items(), f"SAE {self.name} labels", self.d_sae)
        else:
            self.meta["labels"] = read_labels(labels, self.d_sae)
        return self

    def direction(self, feature: int, *, normalize: bool = True, layers: Any = None) -> Direction:
        """Feature ``feature``'s decoder row (the direction it writes into the model's vector) as a
        :class:`~llmri.Direction` that :func:`llmri.steer` takes as it is: unit length
        (``normalize=False``: as the decoder holds it; SAELens's rescaling is folded in at load, so
        such rows are unit already), the same row at each of ``layers`` (default: the layer the SAE
        reads), bound to no model fingerprint (an SAE names its model, not its weights'
        fingerprint). Its provenance names the SAE, the feature and where the SAE reads."""
        from ..._errors import SAEError
        from ...interventions import Direction
        from ...interventions.records import check_layers

        if not 0 <= int(feature) < self.d_sae:
            raise SAEError(f"SAE {self.name}: no feature {feature} (it has 0-{self.d_sae - 1})")
        if layers is None and self.layer is None:
            raise SAEError(f"SAE {self.name} does not say which layer it reads: give direction(..., layers=)")
        row = self.W_dec[int(feature)].detach().to("cpu").float()
        if normalize:
            row = row / row.norm().clamp_min(1e-30)
        at = check_layers((self.layer,) if layers is None else layers)
        provenance = {
            "method": "sae_feature",
            "signal": self.signal or "resid",
            "sae": self.name,
            "feature": int(feature),
            "sae_layer": self.layer,
            "sae_format": self.source_format,
            "sae_path": str(self.path),
            "normalized": bool(normalize),
            **({} if self.model_name is None else {"model_name": self.model_name}),
        }
        return Direction(row.numpy()[None].repeat(len(at), axis=0), at, None, provenance)

    def _weights_on(self, device: Any) -> None:
        if self.W_enc.device != device:
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                t = getattr(self, name)
                if t is not None:
                    setattr(self, name, t.to(device))

    def _normalise(self, x: Any) -> tuple[Any, Any, Any]:
        """``x`` float32 into the SAE's input space; with what undoes it (scale, shift) or ``None``."""
        if self.normalize_activations == "constant_norm_rescale":
            coeff = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, 1 / coeff, None
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + _LN_EPS), std, mu
        return x, None, None

    def _encode(self, x: Any) -> tuple[Any, Any, Any]:
        import torch

        if x.shape[-1] != self.d_in:
            raise ValueError(f"SAE {self.name} reads vectors of {self.d_in}, got shape {tuple(x.shape)}")
        self._weights_on(x.device)
        sae_in, scale, shift = self._normalise(x.detach().to(torch.float32))
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "relu":
            acts = torch.relu(pre)
        elif self.architecture in ("jumprelu", "batchtopk"):
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:  # topk
            values, ids = pre.topk(min(int(self.k or 0), self.d_sae), dim=-1, sorted=False)
            acts = torch.zeros_like(pre).scatter_(-1, ids, torch.relu(values))
        return acts, scale, shift

    def encode(self, x: Any) -> Any:
        """Feature activations ``[..., d_sae]`` of ``x`` ``[..., d_in]``, in ``x``'s dtype and device."""
        import torch

        with torch.no_grad():
            return self._encode(x)[0].to(x.dtype)

    def top_k(self, x: Any, k: int) -> tuple[Any, Any]:
        """The ``k`` strongest features of each vector: ids int32 and activations float16 ``[..., k]``,
        strongest first (a topk SAE's, or a sparse token's, tail is zeros)."""
        import torch

        with torch.no_grad():
            acts = self._encode(x)[0]
            values, ids = acts.topk(min(k, self.d_sae), dim=-1)
            return ids.to(torch.int32), values.to(torch.float16)

    def decode(self, acts: Any) -> Any:
        """``acts @ W_dec + b_dec``, float32, in the SAE's (normalised) input space."""
        import torch

        with torch.no_grad():
            self._weights_on(acts.device)
            return acts.to(torch.float32) @ self.W_dec + self.b_dec

    def encode_decode(self, x: Any) -> tuple[Any, Any]:
        """One pass: the float32 feature activations ``[..., d_sae]`` and reconstruction ``[..., d_in]``
        (in ``x``'s space, the normalisation undone)."""
        import torch

        with torch.no_grad():
            acts, scale, shift = self._encode(x)
            out = None
            if acts.device.type == "cpu" and acts.ndim == 2:
                # sparse features: decode through the active rows only (the others are 0, so exact up to
                # summation order); on an accelerator the dense matmul is cheaper than the host sync
                m = int((acts > 0).sum(-1).max()) if acts.numel() else 0
                if 0 < m * 8 <= self.d_sae:
                    values, ids = acts.topk(m, dim=-1)
                    out = torch.bmm(values[:, None, :], self.W_dec[ids])[:, 0] + self.b_dec
            if out is None:
                out = acts @ self.W_dec + self.b_dec
            if scale is not None:
                out = out * scale
            if shift is not None:
                out = out + shift
            return acts, out

    def reconstruct(self, x: Any) -> Any:
        """``x``'s reconstruction through the SAE, float32, in ``x``'s space (normalisation undone)."""
        return self.encode_decode(x)[1]

    def reconstruction(self, x: Any) -> tuple[Any, Any]:
        """Per vector, float32 ``[...]``: the fraction of variance unexplained ``|x - x̂|² / |x|²`` (the
        variance about zero, so that one token alone defines it) and the cosine of ``x`` and ``x̂``."""
        import torch

        with torch.no_grad():
            xf = x.detach().to(torch.float32)
            rec = self.reconstruct(x)
            fvu = (xf - rec).pow(2).sum(-1) / xf.pow(2).sum(-1).clamp_min(1e-30)
            cos = torch.nn.functional.cosine_similarity(xf, rec, dim=-1)
            return fvu, cos
