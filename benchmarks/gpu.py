"""The GPU run (issue #24): the CUDA tests and the GPU benchmarks in one command, for a GPU machine lent
for minutes. Writes ``gpu.json`` and ``gpu.md`` (the tables for docs/benchmarks.md) into ``--out``, and
the CUDA tests' log and JUnit XML beside them; each section is saved as soon as it ends, so a run cut
short still leaves what it measured.

Sections, most important first (a section that would start after ``--budget-s`` is skipped and says so):

1. the CUDA tests: ``pytest -m cuda`` over the test files that carry the marker;
2. frames on CUDA against the CPU's: the bundled model's shape, random weights (seeded), float32 on
   both, the ``neurons`` reducer, the same weights moved to the GPU: the largest difference per
   signal, relative to that layer's largest ``|x|``, against ``FRAME_RTOL``;
3. capture overhead against plain ``generate()`` (greedy, EOS ignored, a fixed length), variants
   alternating after a warm-up, medians (STYLE.md 12), for two random-weights models built from a
   config without a download: the bundled SmolLM2-135M's shape (its config, converted from the GGUF
   by ``llmri.load_model()``, travels without the weights) and a ~1B Llama-style one (Llama-3.2-1B's
   layer shape with SmolLM2's 49,152-token vocabulary). bfloat16: every signal, ``resid`` only, the
   logit lens exact and bfloat16, attention top-16, lens + attention; float16: every signal. Per
   token: the GPU time inside the model's forward (CUDA events around each forward:
   ``_torchclock.CudaForwardClock``) and the rest of the wall time, outside it.
4. the targets, met or not, with the numbers.

    python benchmarks/gpu.py --out DIR             # on the GPU machine (see benchmarks/gpu_prepare.sh)
    python benchmarks/gpu.py --out DIR --dry-run   # the same steps on the CPU at a tiny size (< 1 min)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import median, table  # noqa: E402

PROMPT_TEXT = (
    "In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship that passed. "
    "One stormy night he wrote about a vessel with no lights, drifting silently towards the rocks, and"
)
#: The carried config and tokenizer files of the bundled model (benchmarks/gpu_prepare.sh writes them).
CARRIED_MODEL_DIR = ROOT / ".gpu" / "smollm2"
#: Llama-3.2-1B's layer shape (16 layers, 2048 wide, GQA 32/8, 8192 MLP) with SmolLM2's tokenizer:
#: 0.97B parameters in the layers, 1.07B with the tied 49,152 x 2048 embedding.
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
#: The dry run's tiny shape, for both models.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
#: Frames on CUDA against the CPU's (float32 on both, stored float16): per signal and layer, the
#: largest |difference| over the layer's largest |x| on the CPU. float16 storage alone rounds to
#: 2**-11 relative (half an ulp either side of a rounding boundary can move a value by one ulp,
#: ~1e-3 of it); float32 sums in another order add far less.
FRAME_RTOL = 2e-3
TARGETS = {"capture_ratio": 1.05, "outside_ms": 0.5, "readouts_ratio": 1.4}

BF16_VARIANTS: dict[str, dict[str, Any]] = {
    "llmri all signals": {},
    "llmri resid only": {"signals": ["resid"]},
    "lens exact": {"lens": True},
    "lens bfloat16": {"lens": True, "lens_dtype": "bfloat16"},
    "attention top-16": {"attention": True, "attention_k": 16},
    "lens exact + attention top-16": {"lens": True, "attention": True, "attention_k": 16},
}
F16_VARIANTS: dict[str, dict[str, Any]] = {"llmri all signals": {}}


class Run:
    """The results so far, written to ``out`` after every section."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.budget = args.budget_s
        self.data: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, name: str, fn: Any, *a: Any) -> Any:
        if self.elapsed() > self.budget:
            self.data["sections"][name] = {"skipped": f"time budget ({self.budget:.0f} s) spent"}
            print(f"[{self.elapsed():6.1f}s] {name}: skipped, budget spent", flush=True)
            self.save()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            result = fn(*a)
        except Exception as exc:  # noqa: BLE001 - a failed section is a result; the next ones still run
            import traceback

            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        free()  # the section's model is gone with its frame
        result["seconds"] = time.perf_counter() - t
        self.data["sections"][name] = result
        print(f"[{self.elapsed():6.1f}s] {name}: done in {result['seconds']:.1f}s", flush=True)
        self.save()
        return result

    def save(self) -> None:
        self.data["targets"] = targets(self.data)
        self.data["total_seconds"] = self.elapsed()
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu.md").write_text(markdown(self.data))


# -- the machine -----------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env: dict[str, Any] = {"device": device, "python": platform.python_version(), "torch": torch.__version__}
    env["card"] = torch.cuda.get_device_name() if device == "cuda" else f"none: {platform.machine()} CPU (dry run)"
    if device == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    for pkg in ("transformers", "accelerate", "numpy", "zarr", "numcodecs", "safetensors", "tokenizers"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    env["cpu_count"] = os.cpu_count()
    return env


# -- 1. the CUDA tests ------------------------------------------------------------------------------------


def cuda_test_files() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "pytest.mark.cuda" in p.read_text()
    )


def cuda_tests(out: Path, dry_run: bool, model_dir: Path) -> dict[str, Any]:
    """``pytest -m cuda`` over the files that carry the marker (only those are imported: a test module
    needing a package the GPU machine lacks cannot stop the run). The dry run collects them only."""
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-p", "no:cacheprovider", "-rA", "-q"]
    cmd += ["--collect-only"] if dry_run else ["--junitxml", str(out / "cuda_tests.xml")]
    env = {**os.environ, "LLMRI_TEST_MODEL_DIR": str(model_dir), "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    log = r.stdout + r.stderr
    (out / "cuda_tests.log").write_text(" ".join(cmd) + "\n\n" + log)
    res: dict[str, Any] = {"command": "python -m pytest -m cuda " + " ".join(files), "files": files, "rc": r.returncode}
    lines = [ln for ln in log.splitlines() if ln.strip()]
    res["summary"] = lines[-1] if lines else ""
    if dry_run:
        res["collected"] = [ln for ln in r.stdout.splitlines() if "::" in ln]
        res["tests"] = len(res["collected"])
        return res
    xml = out / "cuda_tests.xml"
    if xml.is_file():
        cases = ET.parse(xml).getroot().iter("testcase")
        outcome: dict[str, str] = {}
        for c in cases:
            kinds = {child.tag for child in c}
            state = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
            outcome[f"{c.get('classname')}::{c.get('name')}"] = state
        res["outcome"] = outcome
        res["tests"] = len(outcome)
        for state in ("passed", "failed", "skipped"):
            res[state] = sum(v == state for v in outcome.values())
    return res


# -- models -------------------------------------------------------------------------------------------------


def model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if (CARRIED_MODEL_DIR / "config.json").is_file():
        return CARRIED_MODEL_DIR
    from llmri.models import gguf_model_dir
    from llmri.models.identity import default_gguf_path

    return gguf_model_dir(default_gguf_path())


def build(mdir: Path, shape: dict[str, Any], dtype: str, device: str, seed: int = 0, name: str = "random") -> Any:
    """A random-weights causal LM of the bundled model's config with ``shape`` over it, as a
    :class:`llmri.models.LoadedModel`, built on ``device`` (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmri.models import LoadedModel

    cfg = AutoConfig.from_pretrained(mdir)
    for k, v in shape.items():
        setattr(cfg, k, v)
    if shape:
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    tok = AutoTokenizer.from_pretrained(mdir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype)).eval()
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = sum(p.numel() for p in model.parameters())
    # the fingerprint keys llmri's calibration cache: one per shape, seed and dtype, never another model's
    key = hashlib.sha256(f"{cfg.to_json_string()}|{seed}|{dtype}".encode()).hexdigest()[:12]
    return LoadedModel(
        model=model, tokenizer=tok, name=f"{name}, {n / 1e6:.0f}M parameters", path="", fingerprint=f"random-{key}"
    )


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- 2. frames on CUDA against the CPU's -------------------------------------------------------------------


def frames_match(mdir: Path, shape: dict[str, Any], device: str, new_tokens: int) -> dict[str, Any]:
    import numpy as np

    import llmri

    loaded = build(mdir, shape, "float32", "cpu", name="SmolLM2-135M shape")
    prompt = loaded.tokenizer.decode(loaded.tokenizer(PROMPT_TEXT)["input_ids"][:16])
    kw = {"max_new_tokens": new_tokens, "ignore_eos": True, "reducer": "neurons", "progress": False}
    ref = llmri.capture(loaded, prompt, **kw)
    loaded.model.to(device)  # the same weights
    got = llmri.capture(loaded, prompt, **kw)
    a, b = ref.tokens.ids.tolist(), got.tokens.ids.tolist()
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    res: dict[str, Any] = {"device": device, "tokens": len(a), "same_tokens": same, "tokens_equal": a == b}
    res["model"] = loaded.name
    worst = {}
    for sig in ref.signals:
        x = np.asarray(ref.frames(sig), dtype=np.float32)[:same]
        y = np.asarray(got.frames(sig), dtype=np.float32)[:same]
        # per layer: the largest |difference| over the largest |x| of that layer (axis 1 is the layer)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        scale = np.maximum(np.abs(x).max(axis=axes), np.finfo(np.float32).tiny)
        worst[sig] = float((np.abs(x - y).max(axis=axes) / scale).max())
    res["max_rel_diff"] = worst
    res["rtol"] = FRAME_RTOL
    res["equal_within_rtol"] = bool(same > 0 and all(v <= FRAME_RTOL for v in worst.values()))
    return res


# -- 3. capture overhead ------------------------------------------------------------------------------------


def overhead(
    mdir: Path,
    label: str,
    shape: dict[str, Any],
    dtype: str,
    device: str,
    variants: dict[str, dict[str, Any]],
    a: Any,
) -> dict[str, Any]:
    import torch

    import llmri
    from _torchclock import CudaForwardClock, ForwardClock

    loaded = build(mdir, shape, dtype, device, name=label)
    ids = loaded.tokenizer(PROMPT_TEXT)["input_ids"][: a.prompt_tokens]
    prompt = loaded.tokenizer.decode(ids)
    n = a.new_tokens
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    inp = torch.tensor([ids], device=device)
    mask = torch.ones_like(inp)

    def plain() -> None:
        with torch.inference_mode():
            out = loaded.model.generate(inp, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync()
        assert out.shape[1] == len(ids) + n

    fns: dict[str, Any] = {"generate()": plain}
    for label, kw in variants.items():

        def cap(kw: dict[str, Any] = kw) -> None:
            s = llmri.capture(loaded, prompt, max_new_tokens=n, ignore_eos=True, reducer="random", progress=False, **kw)
            sync()
            assert s.tokens.role.count("generated") == n

        fns[label] = cap
    clock = CudaForwardClock(loaded) if device == "cuda" else ForwardClock(loaded)
    times: dict[str, list[float]] = {k: [] for k in fns}
    inside: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(a.warmup):
            fn()
    clock.take()
    for r in range(a.rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            sync()
            clock.take()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
            inside[name].append(clock.take())
    base = median(times["generate()"])
    base_out = median([t - i for t, i in zip(times["generate()"], inside["generate()"], strict=True)])
    rows = []
    for name, ts in times.items():
        m = median(ts)
        outside = median([t - i for t, i in zip(ts, inside[name], strict=True)])
        rows.append(
            {
                "variant": name,
                "median_s": m,
                "tokens_per_s": n / m,
                "x_generate": m / base,
                "forward_ms_per_token": 1000 * median(inside[name]) / n,
                "outside_ms_per_token": 1000 * outside / n,
                "outside_over_generate_ms": 1000 * (outside - base_out) / n,
                "runs": len(ts),
            }
        )
    params = sum(p.numel() for p in loaded.model.parameters())
    cfg = loaded.model.config
    shape_s = f"{cfg.num_hidden_layers} layers x {cfg.hidden_size}, vocab {cfg.vocab_size}"
    res = {"model": loaded.name, "params": params, "shape": shape_s, "dtype": dtype, "device": device}
    res.update({"prompt_tokens": len(ids), "new_tokens": n, "rounds": a.rounds, "rows": rows, "times": times})
    res["inside"] = inside
    return res


# -- 4. targets and the table ------------------------------------------------------------------------------


def _row(sec: dict[str, Any] | None, variant: str) -> dict[str, Any] | None:
    if not sec or "rows" not in sec:
        return None
    return next((r for r in sec["rows"] if r["variant"] == variant), None)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    secs = data["sections"]
    out = []

    def add(name: str, target: str, measured: str | None, met: bool | None) -> None:
        out.append({"target": name, "wanted": target, "measured": measured or "not measured", "met": met})

    t = secs.get("cuda tests") or {}
    if "outcome" in t:
        ok = t["tests"] > 0 and t["failed"] == 0 and t["skipped"] == 0 and t["rc"] == 0
        add(
            "every CUDA test passes",
            "all pass",
            f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped of {t['tests']} (rc {t['rc']})",
            ok,
        )
    else:
        add("every CUDA test passes", "all pass", t.get("summary") or t.get("error") or t.get("skipped"), None)
    f = secs.get("frames cuda vs cpu") or {}
    if "max_rel_diff" in f:
        worst = ", ".join(f"{k} {v:.1e}" for k, v in f["max_rel_diff"].items())
        add(
            "frames on CUDA equal the CPU's",
            f"largest abs. difference <= {FRAME_RTOL:g} x the layer's largest abs. value (float32 on both)",
            f"{worst}; {f['same_tokens']}/{f['tokens']} positions (same tokens up to there)",
            f["equal_within_rtol"],
        )
    else:
        add("frames on CUDA equal the CPU's", f"<= {FRAME_RTOL:g}", f.get("error") or f.get("skipped"), None)
    for key, label in (("135M", "SmolLM2-135M shape"), ("1B", "~1B Llama shape")):
        sec = secs.get(f"overhead {key} bfloat16")
        allrow, both = _row(sec, "llmri all signals"), _row(sec, "lens exact + attention top-16")
        if allrow:
            add(
                f"capture / generate(), {label}, bfloat16",
                f"<= {TARGETS['capture_ratio']}x",
                f"{allrow['x_generate']:.3f}x",
                allrow["x_generate"] <= TARGETS["capture_ratio"],
            )
            add(
                f"outside the forward, {label}",
                f"<= {TARGETS['outside_ms']} ms/token",
                f"{allrow['outside_ms_per_token']:.3f} ms/token ({allrow['outside_over_generate_ms']:+.3f} over "
                "generate()'s)",
                allrow["outside_ms_per_token"] <= TARGETS["outside_ms"],
            )
        else:
            add(f"capture / generate(), {label}", f"<= {TARGETS['capture_ratio']}x", _why(sec), None)
        if both:
            add(
                f"lens exact + attention top-16 / generate(), {label}",
                f"<= {TARGETS['readouts_ratio']}x",
                f"{both['x_generate']:.3f}x",
                both["x_generate"] <= TARGETS["readouts_ratio"],
            )
        sec16 = secs.get(f"overhead {key} float16")
        r16 = _row(sec16, "llmri all signals")
        if r16:
            add(
                f"capture / generate(), {label}, float16",
                f"<= {TARGETS['capture_ratio']}x",
                f"{r16['x_generate']:.3f}x",
                r16["x_generate"] <= TARGETS["capture_ratio"],
            )
    add(
        "live chat over the WebSocket / plain",
        ">= 0.9x",
        "not in this script (benchmarks/live.py needs the bundled GGUF and the viewer's packages)",
        None,
    )
    return out


def _why(sec: dict[str, Any] | None) -> str:
    if not sec:
        return "not run"
    return sec.get("error") or sec.get("skipped") or "no rows"


def markdown(data: dict[str, Any]) -> str:
    env = data.get("env", {})
    lines = [f"# GPU run: {env.get('card', '?')}", ""]
    if env.get("device") != "cuda":
        lines += ["A dry run on the CPU at a tiny size: its numbers check the script, not the targets.", ""]
    lines.append(
        f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
        f"Python {env.get('python')}; {data.get('total_seconds', 0):.0f} s in all."
    )
    lines += ["", "## Targets", ""]
    rows = [{**t, "met": {True: "**met**", False: "**not met**", None: "-"}[t["met"]]} for t in data["targets"]]
    lines.append(table(rows, ["target", "wanted", "measured", "met"]))
    for name, sec in data["sections"].items():
        lines += ["", f"## {name}", ""]
        if "rows" in sec:
            lines.append(
                f"{sec['model']} ({sec['shape']}), {sec['dtype']} on "
                f"{sec['device']}, random weights; {sec['prompt_tokens']}-token prompt, {sec['new_tokens']} new "
                f"tokens (EOS ignored), greedy, {sec['rounds']} alternating rounds after a warm-up, medians. "
                "forward: GPU time inside the forward (CUDA events; wall time on the CPU); outside: the rest."
            )
            lines.append("")
            cols = ["variant", "median_s", "tokens_per_s", "x_generate", "forward_ms_per_token"]
            cols += ["outside_ms_per_token", "outside_over_generate_ms"]
            lines.append(table(sec["rows"], cols))
        else:
            keep = {k: v for k, v in sec.items() if k not in ("outcome", "collected")}
            lines.append("```\n" + json.dumps(keep, indent=1, default=str) + "\n```")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json, gpu.md and the CUDA tests' log")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at a tiny size")
    ap.add_argument(
        "--model-dir",
        help="config + tokenizer of the bundled model (default: .gpu/smollm2, else "
        "the bundled model converted by llmri.load_model())",
    )
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--prompt-tokens", type=int)
    ap.add_argument("--budget-s", type=float, default=420, help="start no section after this many seconds")
    ap.add_argument("--skip-tests", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if a.dry_run:
        device, shapes = "cpu", {"135M": TINY, "1B": TINY}
        a.rounds, a.new_tokens, a.prompt_tokens = a.rounds or 1, a.new_tokens or 4, a.prompt_tokens or 8
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA here: run with --dry-run, or on the GPU machine")
        device, shapes = "cuda", {"135M": {}, "1B": LLAMA_1B}
        a.rounds, a.new_tokens, a.prompt_tokens = a.rounds or 5, a.new_tokens or 128, a.prompt_tokens or 32
    mdir = model_dir(a.model_dir)
    run = Run(out, a)
    run.data["env"] = environment(device)
    run.data["env"]["model_dir"] = str(mdir)
    print(json.dumps(run.data["env"]), flush=True)
    if not a.skip_tests:
        run.section("cuda tests", cuda_tests, out, a.dry_run, mdir)
    run.section("frames cuda vs cpu", frames_match, mdir, shapes["135M"], device, 4 if a.dry_run else 8)
    labels = {"135M": "SmolLM2-135M shape", "1B": "~1B Llama shape"}
    if a.dry_run:
        labels = {k: f"{v}, dry run: tiny" for k, v in labels.items()}
    for dtype, variants in (("bfloat16", BF16_VARIANTS), ("float16", F16_VARIANTS)):
        for key in ("135M", "1B"):
            sec = f"overhead {key} {dtype}"
            run.section(sec, overhead, mdir, labels[key], shapes[key], dtype, device, variants, a)
    run.save()
    print(markdown(run.data))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} in {run.elapsed():.1f} s")


if __name__ == "__main__":
    main()
