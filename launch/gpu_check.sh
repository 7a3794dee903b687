#!/usr/bin/env bash
# The prepared GPU check (issue 12): DeepSpeed ZeRO-2/3, the torch learner, the HF engine, NCCL
# helpers, CUDA RNG, 2 `turnrl train` steps per learner and the learner/checkpoint tests on CUDA,
# in <= 8 minutes; prints a table and writes $OUT/gpu_check.json (launch/gpu_check.py says more).
#   make gpu-check-bundle                # once, where PyPI is reachable: .gpu_bundle/ (< 64 MiB)
#   bash launch/gpu_check.sh             # on the GPU machine, from the repository root
# Through the device tool of this workplace, in one call:
#   run(command="bash launch/gpu_check.sh", carry=[".gpu_bundle"], timeout_s=560)
# Without a GPU (checks the script and every section's CPU path):
#   bash launch/gpu_check.sh --dry-run
# On a GPU box that has the project installed (`make install STACK=cuda`), the bundle is unused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import deepspeed, hydra' 2>/dev/null; then
  if ! ls .gpu_bundle/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_check: DeepSpeed/Hydra missing and no .gpu_bundle/wheels: run 'make gpu-check-bundle'" \
      "where PyPI is reachable and carry .gpu_bundle" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/turnrl-site .gpu_bundle/wheels/*.whl
  export PYTHONPATH="/tmp/turnrl-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .gpu_bundle/cache ] && [ -z "${TURNRL_CACHE:-}" ]; then
  export TURNRL_CACHE="$PWD/.gpu_bundle/cache"  # the embedded tokenizer (no weights needed)
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/turnrl-torch-ext}"
command -v nvidia-smi >/dev/null && nvidia-smi -L || true
exec "$PY" launch/gpu_check.py "$@"
