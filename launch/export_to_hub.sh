#!/usr/bin/env bash
# Export a run's newest complete checkpoint (or a given checkpoint) as an HF model folder, with
# LoRA merged into the base weights, and upload it to the hub (token: HF_TOKEN or `hf auth login`).
#   bash launch/export_to_hub.sh runs/20260101-120000 me/my-agent [--private]
# If the upload fails (offline, unauthorised) the folder stays in exports/<repo name>; re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 CHECKPOINT_OR_RUN_DIR HUB_REPO [--private]" >&2
  exit 2
fi
src=$1; repo=$2; shift 2
exec .venv/bin/turnrl export "$src" --out "exports/${repo##*/}" --overwrite --push-to-hub "$repo" "$@"
