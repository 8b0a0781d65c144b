#!/usr/bin/env bash
# Removes from a copy of the NVIDIA wheels' tree (the image's site-packages/nvidia) every shared
# library the binaries cannot load: a library stays when ldd resolves it for one of the
# binaries (their NEEDED entries and LibTorch's, transitively; matched by file name, so the
# binaries may resolve it from the venv the copy was made from) or when its name matches a
# pattern of docker/cuda-dlopen.txt (libraries LibTorch and cuDNN open with dlopen at run
# time, which ldd cannot see). Everything else that is not a shared library (headers, static
# archives, tools) goes too. Prints one line per removed file and a summary; exits 1 when ldd
# reports a library as not found (the closure would be incomplete) unless it is the driver's.
#
#   bash docker/prune-cuda.sh NVIDIA_DIR BINARY...
set -euo pipefail
(($# >= 2)) || { echo "usage: $0 NVIDIA_DIR BINARY..." >&2; exit 2; }
dir="$1"
shift
[[ -d "$dir" ]] || { echo "$0: $dir: not a folder" >&2; exit 2; }
patterns_file="$(dirname "${BASH_SOURCE[0]}")/cuda-dlopen.txt"
mapfile -t patterns < <(grep -v -E '^\s*(#|$)' "$patterns_file")

declare -A keep=()
ldd_out="$(ldd "$@")"
# libcuda.so.1 and libnvidia-*: the driver, mounted from the host at run time.
missing="$(awk '/=> not found/ { print $1 }' <<<"$ldd_out" | grep -v -E '^(libcuda\.so|libnvidia-)' || true)"
if [[ -n "$missing" ]]; then
  echo "$0: ldd cannot resolve: $missing" >&2
  exit 1
fi
while read -r path; do
  keep["$(basename "$path")"]=1
  keep["$(basename "$(readlink -f "$path")")"]=1
done < <(awk '/=> \// { print $3 }' <<<"$ldd_out" | sort -u)

removed=0
kept=0
while IFS= read -r -d '' file; do
  name="$(basename "$file")"
  wanted=0
  if [[ "$name" == *.so || "$name" == *.so.* ]]; then
    [[ -n "${keep[$name]:-}" ]] && wanted=1
    for pattern in "${patterns[@]}"; do
      # shellcheck disable=SC2053  # a glob on purpose
      [[ "$name" == $pattern ]] && wanted=1
    done
  fi
  if ((wanted)); then
    kept=$((kept + 1))
  else
    echo "removed ${file#"$dir"/}"
    rm -f "$file"
    removed=$((removed + 1))
  fi
done < <(find "$dir" \( -type f -o -type l \) -print0 | sort -z)
find "$dir" -depth -type d -empty -delete
echo "kept $kept file(s), removed $removed"
