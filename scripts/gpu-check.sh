#!/usr/bin/env bash
# The forward-pass check on a lent GPU machine (docs/performance.md, "Forward pass"):
# builds core/ and bench/forward_bench against that machine's own torch, then runs
# bench/forward_compare.py for a random-initialised model shaped like Llama-3-8B in bfloat16
# at 512 and 2,048 tokens: our time against transformers' (eager and sdpa), and our achieved
# TFLOP/s against the machine's measured dense bf16 matmul rate.
#
#   bash scripts/gpu-check.sh prepare   # here: unpack the Debian build deps into .gpu-deps/
#   bash scripts/gpu-check.sh run       # there (device tool, carry [".gpu-deps"]); results in
#                                       # $OUT (or ./gpu-results): forward.jsonl, machine.txt
#
# The GPU machine has LibTorch (its Python's torch 2.11) but none of our Debian libraries:
# `prepare` downloads Abseil, nlohmann-json, and the pkg-config'd libraries core/ and bench/
# configure against (stb, oniguruma, utf8proc, Google Benchmark, pkgconf itself) with
# `apt-get download` and unpacks them with `dpkg -x` into .gpu-deps/root (about 3 MB);
# `run` points CMAKE_PREFIX_PATH and pkg-config there. No gRPC: -DATMAN_BUILD_SERVICE=OFF
# -DATMAN_BUILD_TESTS=OFF. It needs cmake, a C++20 compiler and python3 with torch and
# transformers on the GPU machine (ATMAN_GPU_PYTHON picks the interpreter).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.gpu-deps/root"
PACKAGES=(libabsl-dev libabsl20220623 nlohmann-json3-dev libstb-dev libstb0 libonig-dev libonig5
          libutf8proc-dev libutf8proc2 libbenchmark-dev libbenchmark1debian pkgconf-bin
          libpkgconf3)
log() { printf '[gpu-check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

prepare() {
  rm -rf "$ROOT/.gpu-deps"
  mkdir -p "$ROOT/.gpu-deps/debs" "$DEPS"
  (cd "$ROOT/.gpu-deps/debs" && apt-get download "${PACKAGES[@]}")
  for deb in "$ROOT"/.gpu-deps/debs/*.deb; do dpkg -x "$deb" "$DEPS"; done
  rm -rf "$ROOT/.gpu-deps/debs"
  du -sh "$ROOT/.gpu-deps"
}

run() {
  local py="${ATMAN_GPU_PYTHON:-python3}" out="${OUT:-$ROOT/gpu-results}" build="$ROOT/build-gpu"
  local arch="$DEPS/usr/lib/x86_64-linux-gnu"
  [[ -d "$DEPS" ]] || { log "missing $DEPS: run '$0 prepare' first and carry .gpu-deps"; exit 2; }
  command -v cmake >/dev/null || { log "cmake is not installed on this machine"; exit 2; }
  mkdir -p "$out"
  {
    date -u +%Y-%m-%dT%H:%MZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  } | tee "$out/machine.txt"
  local torch_prefix
  torch_prefix="$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"

  # pkg-config: the machine's own if present, else the carried pkgconf; either way it reads
  # only the carried .pc files, with their /usr paths moved under $DEPS.
  export PKG_CONFIG_SYSROOT_DIR="$DEPS"
  export PKG_CONFIG_LIBDIR="$arch/pkgconfig:$DEPS/usr/share/pkgconfig"
  export LD_LIBRARY_PATH="$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local pkg_config
  pkg_config="$(command -v pkg-config || echo "$DEPS/usr/bin/pkgconf")"
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)

  log "configuring $build (core + bench only)"
  cmake -S "$ROOT" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$DEPS/usr" \
    -Dabsl_DIR="$arch/cmake/absl" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
    -Dbenchmark_DIR="$arch/cmake/benchmark" -DPKG_CONFIG_EXECUTABLE="$pkg_config" \
    -DATMAN_BUILD_SERVICE=OFF -DATMAN_BUILD_TESTS=OFF -DATMAN_PYTHON="$py"
  # ATMAN_GPU_CHECK_CONFIGURE_ONLY=1 stops here (checks the carried dependencies anywhere).
  [[ "${ATMAN_GPU_CHECK_CONFIGURE_ONLY:-0}" == 1 ]] && return 0
  log "building forward_bench"
  cmake --build "$build" --target forward_bench -j "$(nproc)"

  log "Llama-3-8B-shaped model, bfloat16, 512 and 2048 tokens"
  # One round per length: the GPU is not shared. Logits of the last position only (what the
  # engine reads), so the 128k-vocabulary head does not dominate.
  "$py" "$ROOT/bench/forward_compare.py" --build "$build" --preset llama3-8b --device cuda:0 \
    --dtype bfloat16 --tokens 512 2048 --attn eager sdpa --output last --repeats 5 --warmup 2 \
    --rounds 1 --threads "$(nproc)" --workdir /tmp/atman-gpu-check | tee "$out/forward.jsonl"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
