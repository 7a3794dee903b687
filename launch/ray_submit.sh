#!/usr/bin/env bash
# Submit a TurnRL run as a Ray job (the driver joins the cluster: launcher.address=auto).
#
#   .venv/bin/ray start --head --num-cpus=2 --disable-usage-stats   # once (here: a local head)
#   launch/ray_submit.sh trainer.steps=4 launcher.mode=async         # any Hydra overrides
#   .venv/bin/ray stop                                               # when done
#
# Token auth (Ray >= 2.59 turns it on for clusters started locally): `ray start` writes the
# token to ~/.ray/auth_token and the cluster rejects clients that do not send it. The job client
# only sends it with RAY_AUTH_MODE=token, so this script sets that (and generates the token file
# if missing, as `ray start` would). A cluster started with RAY_AUTH_MODE=disabled needs
# RAY_AUTH_MODE=disabled here too. Elsewhere, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH pass the
# token explicitly.
#
# Env: RAY_ADDRESS (default http://127.0.0.1:8265, the head's job server), VENV (default .venv),
# ENTRYPOINT (default: turnrl train launcher=ray launcher.address=auto). The entrypoint runs on
# the head node from this checkout (shared filesystem: local, Slurm); for a remote cluster add
# --working-dir and a runtime env with the package instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  "$VENV/bin/ray" get-auth-token --generate >/dev/null
fi
ENTRYPOINT="${ENTRYPOINT:-$VENV/bin/turnrl train launcher=ray launcher.address=auto}"
ARGS=""
for a in "$@"; do ARGS+=" $(printf '%q' "$a")"; done
exec "$VENV/bin/ray" job submit --address "$RAY_ADDRESS" \
  -- bash -c "cd $(printf '%q' "$ROOT") && $ENTRYPOINT$ARGS"
