#!/usr/bin/env bash
# Single-process run on this machine (CPU or one GPU); any Hydra override is passed through.
#   bash launch/train_local.sh trainer.steps=20 algorithm=drgrpo
set -euo pipefail
cd "$(dirname "$0")/.."
make install
exec .venv/bin/turnrl train "$@"
