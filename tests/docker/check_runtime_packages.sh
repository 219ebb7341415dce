#!/usr/bin/env bash
# Checks that the Dockerfile's runtime stage installs every shared library the binaries load:
# each library's Debian package must be listed there or be a dependency of a listed one.
#   check_runtime_packages.sh DOCKERFILE BINARY...
set -euo pipefail
dockerfile=$1
shift
# The package names of the runtime stage's apt-get install (the lines after "runtime").
listed=$(awk '/AS runtime/{f=1} f' "$dockerfile" | sed -n '/apt-get install/,/rm -rf/p' |
  tr ' \\' '\n\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
  grep -vxE 'apt-get|install|rm|rf|useradd|DEBIAN_FRONTEND=noninteractive|-y|-qq' || true)
[[ -n $listed ]] || { echo "no runtime packages found in $dockerfile" >&2; exit 1; }
# Everything those packages bring, and what every Debian system has.
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances $listed 2>/dev/null | grep -E '^[a-z0-9]' | sort -u)
missing=0
for binary in "$@"; do
  for lib in $(ldd "$binary" | awk '/=>/ {print $3}'); do
    # With merged /usr, dpkg knows a file by one of its two paths: ask for each.
    real=$(readlink -f "$lib")
    pkg=""
    for path in "$lib" "$real" "${real#/usr}" "/usr${lib#/usr}"; do
      pkg=$(dpkg -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1) && [[ -n $pkg ]] && break
    done
    [[ -n $pkg ]] || { echo "$binary: $lib belongs to no package" >&2; missing=1; continue; }
    if ! grep -qx "$pkg" <<<"$closure" && ! grep -qx "${pkg%:*}" <<<"$closure"; then
      echo "$binary needs $lib from $pkg, which the runtime stage does not install" >&2
      missing=1
    fi
  done
done
if ((missing)); then exit 1; fi
echo "runtime stage covers the shared libraries of: $*"
