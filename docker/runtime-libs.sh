#!/usr/bin/env bash
# Prints the Debian packages that provide the shared libraries the given binaries load, leaving
# out LibTorch's own (the torch wheel's lib/ and the NVIDIA wheels, copied into the image as they
# are) and the C runtime every image has. The runtime stage installs exactly this list, so it
# cannot drift from what the build linked.
#
#   bash docker/runtime-libs.sh BINARY... > runtime-packages.txt
set -euo pipefail
(($#)) || { echo "usage: $0 BINARY..." >&2; exit 2; }
declare -A packages=()
while read -r path; do
  case "$path" in
    */site-packages/*) continue ;;
  esac
  real="$(readlink -f "$path")"
  owner="$(dpkg-query -S "$path" 2>/dev/null || dpkg-query -S "$real" 2>/dev/null || true)"
  [[ -n "$owner" ]] || { echo "no Debian package owns $path" >&2; exit 1; }
  pkg="${owner%%:*}"
  case "$pkg" in
    libc6 | libgcc-s1 | libstdc++6) continue ;;  # part of every Debian image
  esac
  packages["$pkg"]=1
done < <(ldd "$@" | awk '/=> \// { print $3 }' | sort -u)
printf '%s\n' "${!packages[@]}" | sort
