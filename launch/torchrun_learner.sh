#!/usr/bin/env bash
# Learner-only job under torchrun: the cold-start SFT stage (no rollout, no RL steps), data
# parallel over NPROC ranks with the DeepSpeed learner. Demonstrations come from the env
# (sft.num_examples) or a chat JSONL (sft.data_path=...). Saves a checkpoint to start RL from.
#   bash launch/torchrun_learner.sh 2 learner=deepspeed_zero2 sft.num_examples=256 sft.epochs=2
# which runs (through launch/torchrun.sh, which also handles multi-node NNODES/NODE_RANK/MASTER_ADDR)
#   torchrun --standalone --nproc_per_node=2 -m rl.cli train trainer.steps=0 sft.enabled=true \
#     eval.compare_stages=false learner=deepspeed_zero2 sft.num_examples=256 sft.epochs=2
# Then RL from its checkpoint, e.g. on Ray:
#   launch/ray_submit.sh model.name=runs/<dir>/checkpoints/step_000000/model sft.enabled=false
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${1:?usage: launch/torchrun_learner.sh NPROC_PER_NODE [hydra overrides...]}"
shift
exec bash launch/torchrun.sh "$NPROC" trainer.steps=0 sft.enabled=true eval.compare_stages=false \
  "$@"
