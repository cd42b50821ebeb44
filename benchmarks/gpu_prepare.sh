#!/usr/bin/env bash
# Prepare the GPU run (issue #24) here, before asking for the GPU machine: that machine reaches no
# package registry and has Python 3.12 with CUDA torch, transformers, accelerate, safetensors, numpy,
# xarray, pytest, pyyaml, requests, tqdm (the device README's package list), but not what else llmri
# needs. This script puts into .gpu/ (gitignored; it travels with `carry: [".gpu"]`):
#
#   .gpu/wheels/   cp312 / pure-Python wheels of llmri's other dependencies, one version each
#   .gpu/smollm2/  the bundled SmolLM2-135M-Instruct's config and tokenizer files, without the weights
#                  (the GGUF is 98 MB and the tree that travels is at most 64 MiB): benchmarks/gpu.py
#                  builds the same-shaped model with random weights, and the cuda tests take their
#                  tokenizer from it (LLMRI_TEST_MODEL_DIR)
#
# then prints the total size that travels and the one command to run there.
#
#   bash benchmarks/gpu_prepare.sh            # from the repository root, with the project's venv's python
#   PYTHON=/path/to/python bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=.gpu
# llmri's dependencies the GPU machine lacks, at the versions tested here (pyproject.toml: zarr,
# platformdirs, gguf; zarr's donfig, google-crc32c and numcodecs). Their other needs (numpy,
# typing-extensions, packaging, pyyaml, requests, tqdm) are there.
PKGS=${GPU_WHEELS:-"zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 platformdirs==4.14.9 gguf==0.19.0"}

rm -rf "$DEST/wheels" "$DEST/smollm2"
mkdir -p "$DEST/wheels" "$DEST/smollm2"
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
for pkg in $PKGS; do  # one at a time: a pure-Python wheel needs --platform any only when no binary exists
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d "$DEST/wheels" "$pkg"
done

# the bundled model's config and tokenizer, converted once from its GGUF by llmri.load_model()'s loader
"$PY" - "$DEST/smollm2" <<'EOF'
import shutil
import sys
from pathlib import Path

from llmri.models import gguf_model_dir
from llmri.models.identity import default_gguf_path

src, dst = gguf_model_dir(default_gguf_path()), Path(sys.argv[1])
for f in sorted(src.iterdir()):
    if f.is_file() and f.suffix in (".json", ".jinja", ".txt", ".model"):
        shutil.copy2(f, dst / f.name)
print("model files:", ", ".join(sorted(p.name for p in dst.iterdir())))
EOF

ls -1 "$DEST/wheels"
carried=$(du -sb "$DEST" | cut -f1)
tracked=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "carried .gpu/: $((carried / 1024)) KiB; the working tree that travels with it: $(((carried + tracked) / 1024 / 1024)) MiB (limit 64 MiB)"
if [ $((carried + tracked)) -ge $((64 * 1024 * 1024)) ]; then
  echo "too large to travel" >&2
  exit 1
fi
cat <<'EOF'

On the GPU machine (the device tool's run, carry [".gpu"], timeout_s 600), one command:

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false && nvidia-smi -L && python3 benchmarks/gpu.py --out $OUT

Its files come back from $OUT: gpu.md (the table for docs/benchmarks.md), gpu.json, cuda_tests.log, cuda_tests.xml.
EOF
