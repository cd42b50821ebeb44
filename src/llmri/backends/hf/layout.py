"""Where a transformers causal LM keeps its decoder blocks, and which module each signal records.

Found by name and class for the architectures transformers ships (attention, state-space mixers,
hybrids, MoE blocks, blocks whose MLP is two bare linear layers), or named by the user with
``hook_points``. Each signal's module output is read by :func:`pick` and checked there.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..._errors import CaptureError

#: Where the decoder blocks live, tried first (then any ModuleList of ``num_hidden_layers`` blocks).
LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.blocks",
    "backbone.layers",
    "model.language_model.layers",
    "transformer.layers",
)
#: A block's token-mixing sub-layer (the ``attn`` signal): attention, or the mixer a layer has
#: instead (Mamba's ``mixer``, Jamba's ``mamba``, Qwen3-Next's ``linear_attn``, RecurrentGemma's
#: ``temporal_block``).
MIXER_NAMES = (
    "self_attn",
    "attn",
    "attention",
    "self_attention",
    "mixer",
    "mamba",
    "linear_attn",
    "temporal_block",
    "token_mixer",
    "time_mix",
    "short_conv",
    "conv",
)
#: A block's MLP (the ``mlp`` signal), dense or mixture of experts.
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mlp_block", "feedforward", "channel_mix")
#: Blocks without an MLP module write the MLP's output with a bare linear layer (OPT's ``fc2``;
#: BERT-style blocks: ``intermediate`` then ``output.dense``, before ``output``'s residual + norm).
MLP_OUT_LINEARS = ("fc2", "dense_4h_to_h", "down_proj", "c_proj", "w2", "fc_out", "output.dense")
#: Modules whose forward returns ``residual + output`` (the residual is an argument): the signal
#: is their inner projection, before that sum.
INNER_OUTPUT = {"BloomAttention": "dense", "BloomMLP": "dense_4h_to_h", "MptMLP": "down_proj"}
_MLP_CLASS = re.compile(r"MLP|Mlp|MoE|Moe|FeedForward|Feedforward|FFN|Ffn|Expert|ChannelMix")
_MIXER_CLASS = re.compile(r"Attention|Attn|Mamba|Mixer|Recurrent|Rglru|DeltaNet|SSM|Ssm|Retention|TimeMix|ShortConv")
_NOT_A_SUBLAYER = re.compile(r"Norm|Dropout|Rotary|Embedding|Identity")


@dataclass(frozen=True)
class Point:
    """One module a signal records at one layer. ``residual``: the name of the forward argument
    the module adds to its output (that sum is undone), or ``None``."""

    path: str
    module: Any
    residual: str | None = None


@dataclass
class Layout:
    """``blocks`` in layer order (``layers_path``: the ModuleList holding them, ``""`` when the
    user named each block), and per signal the :class:`Point` of each layer (``None``: the layer
    has no such module, its values are zeros)."""

    layers_path: str
    blocks: list[Any]
    points: dict[str, list[Point | None]]

    def paths(self) -> dict[str, list[str | None]]:
        return {s: [p.path if p else None for p in pts] for s, pts in self.points.items()}


def get(obj: Any, path: str) -> Any:
    """The attribute (or list item, for a number) at a dotted ``path``; ``None`` if there is none."""
    for part in path.split("."):
        if part.isdigit() and hasattr(obj, "__getitem__"):
            try:
                obj = obj[int(part)]
            except (IndexError, KeyError, TypeError):
                return None
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def text_config(config: Any) -> Any:
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def n_layers_of(model: Any) -> int | None:
    n = getattr(text_config(model.config), "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def _refuse_blocks(model: Any, n: int | None) -> CaptureError:
    arch = type(model).__name__
    extra = f" and for a ModuleList of its {n} layers" if n else ""
    return CaptureError(
        f"hf: cannot find the decoder blocks of {arch} (looked for {', '.join(LAYER_PATHS)}{extra}): name them with "
        "hook_points={'resid': 'path.to.layers.{i}', 'attn': '...{i}...', 'mlp': '...{i}...'}"
    )


def find_layers(model: Any) -> tuple[str, Any]:
    """``(path, ModuleList)`` of the decoder blocks: a known path, else the shallowest ModuleList
    of ``num_hidden_layers`` modules that have sub-modules of their own."""
    import torch

    for path in LAYER_PATHS:
        layers = get(model, path)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return path, layers
    n = n_layers_of(model)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList)
        and n
        and len(mod) == n
        and all(any(True for _ in m.children()) for m in mod)
    ]
    if not found:
        raise _refuse_blocks(model, n)
    return min(found, key=lambda f: f[0].count("."))


def _kind(name: str, mod: Any) -> str | None:
    cls = type(mod).__name__
    mlp_like = bool(_MLP_CLASS.search(cls)) and not _MIXER_CLASS.search(cls)
    if name in MLP_NAMES:
        return "mlp"
    if name in MIXER_NAMES:
        return "mlp" if mlp_like else "attn"  # NemotronH-style blocks: one ``mixer``, sometimes an MLP
    if _NOT_A_SUBLAYER.search(cls):
        return None
    if _MIXER_CLASS.search(cls):
        return "attn"
    return "mlp" if mlp_like else None


def _adds_residual(mod: Any) -> bool:
    """Whether ``mod.forward`` takes the residual it adds (``residual``, or BERT's ``input_tensor``)."""
    try:
        params = inspect.signature(mod.forward).parameters
    except (TypeError, ValueError):
        return False
    return "residual" in params or "input_tensor" in params


def _point(path: str, mod: Any) -> Point:
    inner = INNER_OUTPUT.get(type(mod).__name__)
    if inner is None and get(mod, "output.dense") is not None and _adds_residual(get(mod, "output")):
        inner = "output.dense"  # BERT-style attention: its ``output`` adds the residual (and normalises)
    if inner is not None and get(mod, inner) is not None:
        return Point(f"{path}.{inner}", get(mod, inner))
    try:
        takes_residual = "residual" in inspect.signature(mod.forward).parameters
    except (TypeError, ValueError):
        takes_residual = False
    return Point(path, mod, "residual" if takes_residual else None)


def find_sublayers(block: Any, where: str, d_model: int) -> dict[str, Point]:
    """The ``attn`` and ``mlp`` points of one block (either may be missing)."""
    import torch

    out: dict[str, Point] = {}
    for name, mod in block.named_children():
        kind = _kind(name, mod)
        if kind and kind not in out:
            out[kind] = _point(f"{where}.{name}", mod)
    if "mlp" not in out:
        for name in MLP_OUT_LINEARS:
            lin = get(block, name)
            if isinstance(lin, torch.nn.Linear) and lin.out_features == d_model:
                out["mlp"] = Point(f"{where}.{name}", lin)
                break
    return out


def _resolve(model: Any, signal: str, spec: Any, n: int | None) -> list[Point | None]:
    """A user's ``hook_points[signal]``: a path with ``{i}``, or one path (or ``None``) per layer."""
    if isinstance(spec, str):
        if "{i}" not in spec:
            raise CaptureError(f"hook_points[{signal!r}] = {spec!r}: a path pattern needs {{i}} for the layer index")
        if n is None:  # as many layers as the pattern names modules, from 0
            n = 0
            while get(model, spec.format(i=n)) is not None:
                n += 1
        paths: list[str | None] = [spec.format(i=i) for i in range(n)]
    elif isinstance(spec, Sequence) and all(p is None or isinstance(p, str) for p in spec):
        paths = list(spec)
        if n is not None and len(paths) != n:
            raise CaptureError(f"hook_points[{signal!r}] names {len(paths)} modules for {n} layers")
    else:
        raise CaptureError(f"hook_points[{signal!r}] must be a path pattern with {{i}} or a list of paths")
    out: list[Point | None] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            raise CaptureError(
                f"no mapping for signal {signal!r}: hook_points names {path}, which is not a module of "
                f"{type(model).__name__}"
            ) from None
        out.append(_point(path, mod))
    return out


def find_layout(
    model: Any,
    signals: Sequence[str],
    d_model: int,
    *,
    requested: bool = True,
    hook_points: Mapping[str, Any] | None = None,
) -> Layout:
    """The blocks of ``model`` and each signal's module per block.

    A signal no layer has is an error when ``requested`` (the caller named it), else left out;
    a signal some layers lack records zeros there. ``hook_points`` (``{signal: pattern}``) wins
    over what is found; everything it names is checked here, before any forward.
    """
    hook_points = dict(hook_points or {})
    bad = [s for s in hook_points if s not in ("resid", "attn", "mlp")]
    if bad:
        raise CaptureError(f"hook_points: unknown signal {bad[0]!r} (choose from resid, attn, mlp)")
    points: dict[str, list[Point | None]] = {}
    if "resid" in hook_points:
        resid = _resolve(model, "resid", hook_points["resid"], None)
        if not resid or any(p is None for p in resid):
            raise CaptureError("hook_points['resid'] must name a module at every layer")
        layers_path = ""
        pattern = hook_points["resid"]
        if isinstance(pattern, str) and pattern.endswith(".{i}"):
            layers_path = pattern[: -len(".{i}")]
        blocks = [p.module for p in resid if p is not None]
        paths = [p.path for p in resid if p is not None]
    else:
        try:
            layers_path, layers = find_layers(model)
        except CaptureError:
            if not (set(signals) <= set(hook_points)):
                raise
            layers_path, layers = "", []
        blocks = list(layers)
        paths = [f"{layers_path}.{i}" for i in range(len(blocks))]
        resid = [Point(p, b) for p, b in zip(paths, blocks, strict=True)]
    n = len(blocks) or n_layers_of(model)
    found = [find_sublayers(b, p, d_model) for b, p in zip(blocks, paths, strict=True)]
    for sig in signals:
        if sig in hook_points and sig != "resid":
            pts = _resolve(model, sig, hook_points[sig], n)
        elif sig == "resid":
            pts = list(resid)
        else:
            pts = [f.get(sig) for f in found]
        if not pts or all(p is None for p in pts):
            if not requested:
                continue
            looked = MIXER_NAMES if sig == "attn" else MLP_NAMES + MLP_OUT_LINEARS
            where = f"{paths[0]}." if paths else ""
            raise CaptureError(
                f"hf: {type(model).__name__} has no {sig!r} module in any layer (looked for "
                f"{', '.join(where + x for x in looked[:6])}, ...): drop {sig!r} from signals, or name its module "
                f"with hook_points={{{sig!r}: '{where or 'path.{i}.'}<module>'}}"
            )
        points[sig] = pts
    if not points:
        raise CaptureError(f"hf: none of the signals asked for exists in {type(model).__name__}")
    return Layout(layers_path, blocks, points)


def describe(out: Any) -> str:
    """A module output's structure, for errors: ``Tensor[1, 5, 64]``, ``(Tensor[5, 64], None)``."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"Tensor[{', '.join(str(x) for x in out.shape)}]"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(describe(x) for x in out) + ")"
    return type(out).__name__


def pick(out: Any, n: int, d: int) -> Any:
    """The ``[1, n, d]`` vector in a module's output: the output itself, or the first element of a
    tuple (or ModelOutput) shaped so; ``[n, d]`` (an MoE's or OPT's flattened batch) gets its
    batch back. ``None`` when there is none (the caller raises, naming the module)."""
    import torch

    if isinstance(out, torch.Tensor):
        items: Sequence[Any] = (out,)
    elif isinstance(out, (tuple, list)):
        items = out
    elif callable(getattr(out, "to_tuple", None)):
        items = out.to_tuple()
    else:
        return None
    for t in items:
        if isinstance(t, torch.Tensor):
            if t.dim() == 3 and t.shape[0] == 1 and t.shape[1] == n and t.shape[2] == d:
                return t
            if t.dim() == 2 and t.shape[0] == n and t.shape[1] == d:
                return t.unsqueeze(0)
    return None


def residual_arg(module: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The value of ``module.forward``'s argument ``name`` in one call."""
    if name in kwargs:
        return kwargs[name]
    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    return bound.arguments.get(name)
