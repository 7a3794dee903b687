#!/usr/bin/env bash
# Data-parallel training with the DeepSpeed learner, one process per rank (torchrun).
#   bash launch/torchrun.sh 2 learner=deepspeed_zero2 trainer.steps=20
# which runs
#   torchrun --standalone --nproc_per_node=2 -m rl.cli train learner=deepspeed_zero2 trainer.steps=20
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (rank 0's host) on every node, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash launch/torchrun.sh 8 learner=deepspeed_zero3
# Every rank rolls out its own share of trainer.tasks_per_step (whole GRPO groups); gradients
# are reduced by DeepSpeed (NCCL on CUDA, gloo on CPU). Rank 0 logs, evaluates and prints.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${1:?usage: launch/torchrun.sh NPROC_PER_NODE [hydra overrides...]}"
shift
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
if "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  :
else
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"  # DeepSpeed on CPU: gloo backend
fi
if [ "${NNODES:-1}" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="${NODE_RANK:?}" \
    --master_addr="${MASTER_ADDR:?}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NPROC" -m rl.cli train "$@"
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m rl.cli train "$@"
