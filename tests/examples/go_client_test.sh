#!/usr/bin/env bash
# examples/go against the real gateway and emulator (with_gateway.sh):
#   go_client_test.sh BIN_DIR
# The stubs are generated and the client compiled offline from Debian's packages into a
# temporary directory (examples/go/build.sh), then run. Fails, saying what to install, when the
# Go toolchain or libraries are missing. Exits with the client's status.
set -euo pipefail
bin=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

timeout 400 "$src/examples/go/build.sh" "$work/imgw-go-client"
"$src/tests/examples/with_gateway.sh" "$bin" \
  "$work/imgw-go-client" --target=@TARGET@ --missing=ghost
