#!/usr/bin/env bash
# README command (1): set up, build, and start atman on a model folder (default:
# models/default, the embedded default model).
#
# NOTE: the gRPC service does not exist yet. Until it does, this command loads the model
# folder with the engine's checkpoint loader (core/io) through tools/atman-inspect and prints
# what it found. It will start the server once server/ lands.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
model="${1:-$ATMAN_ROOT/models/default}"
"$ATMAN_ROOT/scripts/build.sh" --target atman-inspect
if [[ ! -d "$model" ]]; then
  atman_log "no model folder at $model (the embedded default model has not landed yet);"
  atman_log "pass a Hugging Face checkpoint folder: bash scripts/run.sh <folder>"
  exit 2
fi
exec "$ATMAN_BUILD/tools/atman-inspect" "$model"
