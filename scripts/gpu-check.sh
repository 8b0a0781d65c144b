#!/usr/bin/env bash
# The GPU check on a lent GPU machine (docs/performance.md, "GPU (H200)"): builds core/, the
# GPU tests (tests/gpu/, ctest label gpu, when the tree has them) and the benchmarks against
# that machine's own torch, runs the GPU tests on oracle fixtures carried from here, then
# bench/gpu_bench.py on random-initialised Llama-3-8B- and LLaVA-1.5-7B-shaped models in
# bfloat16: AtMan explanation time against (n + 1) plain passes, a plain Python AtMan on
# transformers, Captum Integrated Gradients (time and peak memory), the dynamic batcher with
# 1/2/4 workers, and achieved TFLOP/s against the measured dense matmul rate; then, with what
# is left of the budget, Qwen2.5-VL-7B- and LLaVA-NeXT-7B-shaped models (one 448 x 448 image =
# 256 merged tokens, 1,024 tokens in all; one 336 x 336 image = 1,176 anyres tokens, 1,280 in
# all): our explanation, then the plain Python AtMan.
#
#   bash scripts/gpu-check.sh prepare   # here: .gpu-deps/ (Debian build deps, GoogleTest,
#                                       # the captum wheel, the oracle fixtures the GPU tests read)
#   bash scripts/gpu-check.sh run       # there (device tool, carry [".gpu-deps"]); results in
#                                       # $OUT (or ./gpu-results)
#   ATMAN_GPU_CHECK_DRY=1 bash scripts/gpu-check.sh run              # here: the same run on the
#                                       # CPU with tiny models (and tests/gpu with the CPU standing
#                                       # in for cuda:0), to prove the script end to end
#   ATMAN_GPU_CHECK_CONFIGURE_ONLY=1 bash scripts/gpu-check.sh run   # stops after configuring
#
# A rerun may narrow the run: ATMAN_GPU_CHECK_PRESETS (default "llama3-8b llava-1.5-7b
# qwen2.5-vl-7b llava-next-7b"; dry: "tiny-llama tiny-llava tiny-qwen2.5-vl tiny-llava-next"),
# ATMAN_GPU_CHECK_PHASES (the first model's gpu_bench phases, default "matmul ours reference
# ig batcher noise" for a text model, "matmul ours reference" for Qwen2-VL / LLaVA-NeXT; the
# second model runs "ours reference ig" (LLaVA-1.5) or "ours reference", later ones "ours
# reference"), ATMAN_GPU_CHECK_TESTS (a ctest -R regex over the GPU tests, default all),
# ATMAN_GPU_CHECK_CTEST_JOBS (default 1: the tests' printed figures stay in order). The
# Qwen2.5-VL and LLaVA-NeXT runs alone (their GPU run is still owed, docs/performance.md):
#   ATMAN_GPU_CHECK_PRESETS="qwen2.5-vl-7b llava-next-7b" bash scripts/gpu-check.sh run
#
# The GPU machine has LibTorch (its Python's torch), transformers, numpy, pillow, tokenizers,
# safetensors, cmake and ninja, but none of our Debian libraries and no network: `prepare`
# downloads Abseil, nlohmann-json, GoogleTest/GMock and the pkg-config'd libraries core/ and
# bench/ configure against (stb, libjpeg, oniguruma, utf8proc, Google Benchmark, pkgconf
# itself) with `apt-get download` and unpacks them with `dpkg -x` into .gpu-deps/root (pruned of
# documentation and unused static archives); downloads the captum
# wheel (its dependencies matplotlib, numpy, packaging, torch, tqdm are on the GPU machine) into
# .gpu-deps/wheels; and copies the oracle fixtures (generated here by ctest's oracle steps) into
# .gpu-deps/fixtures, which the GPU build's tests read (-DATMAN_FIXTURES_DIR; the oracle steps
# are excluded there with ctest -FA). No gRPC: -DATMAN_BUILD_SERVICE=OFF.
#
# Time: the whole `run` must fit 7 minutes on the H200, so that one rerun fits the session's
# 15 (the first run, 2026-11-30: configure, build and the GPU tests 52 s, Llama-3-8B 105 s,
# LLaVA-1.5-7B 61 s; estimated for the later two, unmeasured: each 7-8B model built on the GPU
# and saved to tmpfs about 30 s, the engine's load about 10 s, Qwen2.5-VL's explanation at
# 1,024 tokens about 20 s and LLaVA-NeXT's at 1,280 about 30 s, the Python reference 15 s
# each: 75 s and 90 s, so within the default budget the last one may be cut short or skipped).
# Phases run in order of importance, each only if the time it needs at least is left of
# ATMAN_GPU_CHECK_BUDGET_S (default 400 s from the start) and killed when the budget is spent;
# a failed phase is logged and the next one runs. Results are written to $OUT as they come:
#   machine.txt     the machine, the toolchain, the Python packages
#   gpu-check.log   everything this script prints: phases, their exit codes and durations
#   build.log       configure and build output
#   gpu-tests.xml   ctest's JUnit report of the gpu label; gpu-tests.log its output
#   bench.jsonl     bench/gpu_bench.py's records, one JSON line per figure
#   summary.txt     the figures as plain lines, and the phase table
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.gpu-deps/root"
PACKAGES=(libabsl-dev libabsl20220623 nlohmann-json3-dev libstb-dev libstb0 libonig-dev libonig5
          libutf8proc-dev libutf8proc2 libbenchmark-dev libbenchmark1debian pkgconf-bin
          libpkgconf3 libjpeg62-turbo-dev libjpeg62-turbo libgtest-dev libgmock-dev)
CAPTUM=captum==0.9.0
# What the captum wheel may require: the packages the GPU machine's Python has.
GPU_PYTHON_HAS=(matplotlib numpy packaging torch tqdm)
FIXTURES=(model_cases atman_cases llava_cases)
log() { printf '[gpu-check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

prepare() {
  set -e
  source "$ROOT/scripts/common.sh"
  local build="$ATMAN_BUILD"
  rm -rf "$ROOT/.gpu-deps"
  mkdir -p "$ROOT/.gpu-deps/debs" "$DEPS" "$ROOT/.gpu-deps/wheels" "$ROOT/.gpu-deps/fixtures"
  (cd "$ROOT/.gpu-deps/debs" && apt-get download "${PACKAGES[@]}")
  for deb in "$ROOT"/.gpu-deps/debs/*.deb; do dpkg -x "$deb" "$DEPS"; done
  rm -rf "$ROOT/.gpu-deps/debs"
  # Less to carry: documentation, and the static archives no CMake config names (Abseil's:
  # its config imports the shared libraries; GoogleTest's archives are what it imports).
  rm -rf "$DEPS"/usr/share/{doc,doc-base,lintian,man}
  local lib archive referenced
  lib="$DEPS/usr/lib/x86_64-linux-gnu"
  referenced="$(grep -ho 'lib[A-Za-z0-9_]*\.a' "$lib"/cmake/*/*.cmake | sort -u)"
  for archive in "$lib"/*.a; do
    grep -qx "$(basename "$archive")" <<<"$referenced" || rm "$archive"
  done

  "$ATMAN_PY" -m pip download -q --no-deps --only-binary=:all: "$CAPTUM" -d "$ROOT/.gpu-deps/wheels"
  local wheel requires missing=()
  wheel="$(ls "$ROOT"/.gpu-deps/wheels/*.whl)"
  requires="$("$ATMAN_PY" - "$wheel" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0].lower())
EOF
)"
  for dep in $requires; do
    [[ " ${GPU_PYTHON_HAS[*]} " == *" $dep "* ]] || missing+=("$dep")
  done
  if ((${#missing[@]})); then
    log "$(basename "$wheel") requires ${missing[*]}, which the GPU machine does not have"
    exit 1
  fi
  log "$(basename "$wheel"): requires $(tr "\n" " " <<<"$requires")(all on the GPU machine)"

  # The fixtures the GPU tests read, from this tree's build (generated when missing).
  for fixture in "${FIXTURES[@]}"; do
    if [[ ! -d "$build/fixtures/$fixture" ]]; then
      log "generating $build/fixtures/$fixture (ctest -R oracle.$fixture)"
      ctest --test-dir "$build" -R "^oracle\.$fixture\$" --output-on-failure >&2
    fi
    cp -a "$build/fixtures/$fixture" "$ROOT/.gpu-deps/fixtures/"
  done

  local tree_kib deps_kib
  tree_kib="$(cd "$ROOT" && git ls-files -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
  deps_kib="$(du -sk "$ROOT/.gpu-deps" | cut -f1)"
  du -sh "$ROOT"/.gpu-deps/* >&2
  log "carried: .gpu-deps $((deps_kib / 1024)) MiB + tracked tree $((tree_kib / 1024)) MiB" \
      "= $(((deps_kib + tree_kib) / 1024)) MiB (limit 64 MiB)"
  if ((deps_kib + tree_kib > 48 * 1024)); then
    log "that is too close to the 64 MiB limit of what the device tool carries"
    exit 1
  fi
}

# phase <name> <seconds it needs at least> <seconds it may take at most, 0: the budget's rest>
#       <log file, or - for this script's log> <command...>
# Runs the command unless less than it needs is left of the budget, killed when its time or
# the budget is spent; records the exit code and the duration in PHASES. Never fails the script.
PHASES=()
phase() {
  local name=$1 need=$2 cap=$3 logfile=$4 left limit t0 rc=0
  shift 4
  left=$((DEADLINE - $(date +%s)))
  if ((left < need)); then
    log "phase $name: SKIPPED ($left s left of the budget, needs about $need s)"
    PHASES+=("$(printf '%-22s skipped (%s s left, needs %s s)' "$name" "$left" "$need")")
    return 0
  fi
  limit=$left
  ((cap > 0 && cap < left)) && limit=$cap
  log "phase $name: start ($left s left of the budget, this phase may take $limit s)"
  t0=$(date +%s)
  if [[ "$logfile" == - ]]; then
    timeout -k 10 "$limit" "$@" || rc=$?
  else
    timeout -k 10 "$limit" "$@" >>"$logfile" 2>&1 || rc=$?
  fi
  local took=$(($(date +%s) - t0)) what=ok
  ((rc == 0)) || what="FAILED (exit $rc$( ((rc == 124 || rc == 137)) && echo ', out of time'))"
  log "phase $name: $what in $took s"
  if ((rc != 0)) && [[ "$logfile" != - ]]; then tail -n 25 "$logfile" >&2; fi
  PHASES+=("$(printf '%-22s %-40s %4d s' "$name" "$what" "$took")")
  return 0
}

run() {
  local dry="${ATMAN_GPU_CHECK_DRY:-0}" py out build="$ROOT/build-gpu" arch budget device work
  local tests_cap="${ATMAN_GPU_CHECK_TESTS_S:-150}" props="${TMPDIR:-/tmp}/atman-gpu-test-properties-$$"
  local bench_sizes=() tokens=(1024 512)
  # A rerun may narrow the run: which models, which phases of the first, which GPU tests.
  local presets=(${ATMAN_GPU_CHECK_PRESETS:-llama3-8b llava-1.5-7b qwen2.5-vl-7b llava-next-7b})
  if [[ "$dry" == 1 ]]; then
    source "$ROOT/scripts/common.sh"
    py="${ATMAN_GPU_PYTHON:-$ATMAN_PY}"
    build="$ROOT/build-gpu-dry"
    budget="${ATMAN_GPU_CHECK_BUDGET_S:-3600}"
    device=cpu
    presets=(${ATMAN_GPU_CHECK_PRESETS:-tiny-llama tiny-llava tiny-qwen2.5-vl tiny-llava-next})
    tokens=(64 32)
    bench_sizes=(--reference-rows 8 --reference-batch 4 --ig-steps 8 --ig-batch 4
                 --batcher-requests 4 --batcher-tokens 32)
    work="${TMPDIR:-/tmp}/atman-gpu-check-$$"
    # tests/gpu's own dry run: the CPU stands in for cuda:0 (gpu_test.cc, OnCpuStandIn).
    export ATMAN_GPU_TESTS_ON_CPU=1
    tests_cap="${ATMAN_GPU_CHECK_TESTS_S:-900}"
  else
    py="${ATMAN_GPU_PYTHON:-python3}"
    budget="${ATMAN_GPU_CHECK_BUDGET_S:-400}"
    device=cuda:0
    # The checkpoints (16 GB) go to tmpfs when it has room, so that the engine loads from memory.
    work=/tmp/atman-gpu-check
    if (($(df -k --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0) > 20 * 1024 * 1024)); then
      work=/dev/shm/atman-gpu-check
    fi
  fi
  DEADLINE=$(($(date +%s) + budget))
  out="$OUT_DIR"
  arch="$DEPS/usr/lib/x86_64-linux-gnu"
  [[ -d "$DEPS" ]] || { log "missing $DEPS: run '$0 prepare' first and carry .gpu-deps"; exit 2; }
  command -v cmake >/dev/null || { log "cmake is not installed on this machine"; exit 2; }
  log "run: $([[ "$dry" == 1 ]] && echo 'DRY (CPU, tiny models)' || echo 'GPU'), budget $budget s, results in $out"

  {
    date -u +%Y-%m-%dT%H:%MZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
    echo "cores $(nproc); $(free -g | awk '/^Mem/ {print "memory " $2 " GiB"}')"
    df -h /dev/shm /tmp 2>/dev/null | sed 's/^/disk /'
    cmake --version | head -1
    c++ --version 2>/dev/null | head -1
    echo "ninja $(ninja --version 2>/dev/null || echo 'not installed')"
    "$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  } >"$out/machine.txt" 2>&1
  cat "$out/machine.txt"

  local torch_prefix
  torch_prefix="$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
  # pkg-config: the machine's own if present, else the carried pkgconf; either way it reads
  # only the carried .pc files, with their /usr paths moved under $DEPS.
  export PKG_CONFIG_SYSROOT_DIR="$DEPS"
  export PKG_CONFIG_LIBDIR="$arch/pkgconfig:$DEPS/usr/share/pkgconfig"
  export LD_LIBRARY_PATH="$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local pkg_config generator=() keep_going=()
  pkg_config="$(command -v pkg-config || echo "$DEPS/usr/bin/pkgconf")"
  if command -v ninja >/dev/null; then generator=(-G Ninja); keep_going=(-- -k 0); fi

  # Tests on (the GPU suite), the service off (no gRPC there); warnings are not errors on a
  # compiler we have not seen; the tests read the carried fixtures.
  phase configure 10 0 "$out/build.log" \
    cmake -S "$ROOT" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$DEPS/usr" \
    -Dabsl_DIR="$arch/cmake/absl" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
    -Dbenchmark_DIR="$arch/cmake/benchmark" -DGTest_DIR="$arch/cmake/GTest" \
    -DPKG_CONFIG_EXECUTABLE="$pkg_config" -DATMAN_BUILD_SERVICE=OFF -DATMAN_BUILD_TESTS=ON \
    -DATMAN_WERROR=OFF -DATMAN_PYTHON="$py" -DATMAN_FIXTURES_DIR="$ROOT/.gpu-deps/fixtures"
  if [[ "${ATMAN_GPU_CHECK_CONFIGURE_ONLY:-0}" == 1 ]]; then
    printf '%s\n' "${PHASES[@]}"
    return 0
  fi

  local targets=(explain_bench batcher_bench) gpu_tests=0
  if [[ -f "$ROOT/tests/gpu/CMakeLists.txt" ]]; then
    targets=(test_gpu "${targets[@]}")
    gpu_tests=1
  fi
  # -k 0: a test that does not compile leaves the benchmarks' build going, and vice versa.
  phase build 30 0 "$out/build.log" \
    cmake --build "$build" --target "${targets[@]}" -j "${ATMAN_JOBS:-$(nproc)}" "${keep_going[@]}"

  if ((gpu_tests)); then
    # -FA '.*': no fixture steps (the oracles ran here; their output is carried). Each test
    # is its own process (gtest_discover_tests), so each pays LibTorch's and CUDA's start-up;
    # ATMAN_GPU_CHECK_CTEST_JOBS runs several at once. At most ATMAN_GPU_CHECK_TESTS_S (150 s),
    # so that a hang leaves the benchmarks their time.
    # ctest's JUnit report has no GoogleTest properties (RecordProperty: the bf16 error, the
    # noise floor): each test process also writes GoogleTest's own XML, and their properties
    # are appended to gpu-tests.log and summary.txt.
    local gtest_xml="${TMPDIR:-/tmp}/atman-gpu-gtest-$$"
    rm -rf "$gtest_xml"
    phase gpu-tests 20 "$tests_cap" "$out/gpu-tests.log" \
      env GTEST_OUTPUT="xml:$gtest_xml/" \
      ctest --test-dir "$build" -L gpu -R "${ATMAN_GPU_CHECK_TESTS:-.}" -FA '.*' -V --timeout 120 \
      -j "${ATMAN_GPU_CHECK_CTEST_JOBS:-1}" --output-junit "$out/gpu-tests.xml"
    "$py" - "$gtest_xml" >"$props" 2>&1 <<'EOF'
import glob, sys, xml.etree.ElementTree as ET
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    for case in ET.parse(path).getroot().iter("testcase"):
        for prop in case.iter("property"):
            print(f"{case.get('classname')}.{case.get('name')}: {prop.get('name')} = {prop.get('value')}")
EOF
    {
      echo
      echo "GoogleTest properties:"
      cat "$props"
    } >>"$out/gpu-tests.log"
    rm -rf "$gtest_xml"
  else
    log "phase gpu-tests: no tests/gpu/ in this tree, so no GPU tests to build or run"
    echo "no tests/gpu/ in this tree: no GPU tests were built or run" >"$out/gpu-tests.log"
    PHASES+=("$(printf '%-22s %s' gpu-tests 'absent (no tests/gpu/)')")
  fi

  # captum from the carried wheel (no network there): pip if the Python has it, else unzip.
  local site="${ATMAN_GPU_SITE:-/tmp/atman-gpu-site-$$}"
  rm -rf "$site"
  if ! "$py" -m pip install -q --no-index --no-deps --target "$site" "$ROOT"/.gpu-deps/wheels/*.whl; then
    for wheel in "$ROOT"/.gpu-deps/wheels/*.whl; do "$py" -m zipfile -e "$wheel" "$site"; done
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  "$py" -c 'import captum; print("captum", captum.__version__, "from", captum.__file__)' ||
    log "captum does not import: the Integrated Gradients phase will fail"

  # Llama-3-8B first (every phase at the first length, the batcher, then the second length's
  # comparisons, which must leave the LLaVA run its time); then LLaVA-1.5-7B (one image is
  # 576 tokens, so only the first length holds it); then, with what is left, Qwen2.5-VL-7B and
  # LLaVA-NeXT-7B at their presets' own lengths (one image plus text), ours first; the
  # reference of every one but the last must leave the next one's explanation its time.
  local llava_needs=75 vlm_needs=90 common=(--build "$build" --device "$device" --dtype bfloat16
                                            --workdir "$work" --out "$out/bench.jsonl" "${bench_sizes[@]}")
  [[ "$dry" == 1 ]] && common+=(--threads "$(nproc)")
  local i preset phases lengths reserve need
  for ((i = 0; i < ${#presets[@]}; i++)); do
    preset="${presets[i]}"
    lengths=(--tokens "${tokens[@]}")
    reserve=()
    need=60
    case "$preset" in
      *qwen*|*llava-next*)
        phases=(ours reference)
        ((i == 0)) && phases=(${ATMAN_GPU_CHECK_PHASES:-matmul ours reference})
        lengths=()  # the preset's own: its image's tokens plus text
        need=$vlm_needs
        ((i + 1 < ${#presets[@]})) && reserve=(--reserve "$vlm_needs" --reserve-first)
        ;;
      *)
        if ((i == 0)); then
          phases=(${ATMAN_GPU_CHECK_PHASES:-matmul ours reference ig batcher noise})
          ((i + 1 < ${#presets[@]})) && reserve=(--reserve "$llava_needs")
        else
          phases=(ours reference ig)
        fi
        ;;
    esac
    phase "bench-$preset" "$need" 0 - \
      "$py" "$ROOT/bench/gpu_bench.py" --preset "$preset" "${lengths[@]}" \
      --phases "${phases[@]}" --deadline "$((DEADLINE - 5))" "${reserve[@]}" "${common[@]}"
    rm -rf "$work"
  done
  rm -rf "$work" "$site"

  {
    [[ -f "$out/bench.jsonl" ]] && "$py" "$ROOT/bench/gpu_bench.py" --summarize "$out/bench.jsonl"
    if [[ -f "$props" ]]; then
      echo
      echo "GPU tests' properties (tests/gpu, RecordProperty):"
      sed 's/^/  /' "$props"
      rm -f "$props"
    fi
    echo
    echo "phases (budget $budget s):"
    printf '  %s\n' "${PHASES[@]}"
  } >"$out/summary.txt" 2>&1
  cat "$out/summary.txt"
}

case "${1:-}" in
  prepare) prepare ;;
  run)
    OUT_DIR="${OUT:-$ROOT/gpu-results}"
    mkdir -p "$OUT_DIR"
    run 2>&1 | tee -a "$OUT_DIR/gpu-check.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
