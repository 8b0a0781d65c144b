#!/usr/bin/env bash
# README command (1): set up, build, and start the atman gRPC service on a model folder
# (default: models/default, the embedded default model). Extra arguments go to atman-server
# (see docs/operations.md), e.g. `bash scripts/run.sh --port 50052`; ATMAN_MODEL picks another
# checkpoint folder.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
model="${ATMAN_MODEL:-$ATMAN_ROOT/models/default}"
# Only what serving needs: the serve packages, torch in the venv, no tests (scripts/setup.sh).
ATMAN_SETUP_MODE=serve "$ATMAN_ROOT/scripts/build.sh" --target atman-server
if [[ ! -f "$model/config.json" && "$model" != *.gguf ]] && ! compgen -G "$model/*.gguf" > /dev/null; then
  atman_log "no model at $model: set ATMAN_MODEL to a Hugging Face checkpoint folder or a .gguf file"
  exit 2
fi
atman_log "starting atman-server on $model (defaults: gRPC :50051, metrics :9090/metrics; Ctrl-C stops)"
exec "$ATMAN_BUILD/server/atman-server" --model "$model" "$@"
