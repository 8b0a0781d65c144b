#!/usr/bin/env bash
# Lays out a CUDA toolkit at $1 (default /usr/local/cuda) from the NVIDIA wheels installed in
# the venv $ATMAN_VENV (requirements.txt plus docker/cuda-toolkit.txt), the way CMake's
# FindCUDAToolkit expects it: bin/nvcc, include/, lib64/ with unversioned .so links, and the
# libcuda.so stub. We compile no CUDA code: this only satisfies LibTorch's CMake config.
set -euo pipefail
prefix="${1:-/usr/local/cuda}"
python="${ATMAN_VENV:?set ATMAN_VENV}/bin/python"
site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
wheels="$site/nvidia/cu13"
[[ -x "$wheels/bin/nvcc" ]] || { echo "no nvcc in $wheels: install docker/cuda-toolkit.txt" >&2; exit 1; }
mkdir -p "$prefix"
cp -a "$wheels/." "$prefix/"
ln -sfn lib "$prefix/lib64"
# The wheels ship only versioned sonames (libcudart.so.13); the linker wants libcudart.so.
for lib in "$prefix"/lib/lib*.so.*; do
  base="${lib%%.so.*}.so"
  [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
done
if [[ ! -e "$prefix/lib/stubs/libcuda.so" && -e "$prefix/lib/stubs/libcuda.so.1" ]]; then
  ln -s libcuda.so.1 "$prefix/lib/stubs/libcuda.so"
fi
"$prefix/bin/nvcc" --version | tail -1
