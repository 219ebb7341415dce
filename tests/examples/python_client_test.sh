#!/usr/bin/env bash
# examples/python/imgw_client.py against the real gateway and emulator (with_gateway.sh, which
# runs the gateway at --rate_limit=5 and --max_queued=4 so that the client's bursts are refused
# in part, with retry-after hints it must honour, by hand and through the README's retry policy):
#   python_client_test.sh BIN_DIR PYTHON3
# The stubs are generated first (examples/python/generate.sh). Exits with the client's status.
set -euo pipefail
bin=$1
python=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

PYTHON=$python timeout 60 "$src/examples/python/generate.sh" "$work/gen"
PYTHONPATH="$work/gen" "$src/tests/examples/with_gateway.sh" "$bin" \
  "$python" "$src/examples/python/imgw_client.py" --target=@TARGET@ --missing=ghost \
  --metrics=http://@METRICS@/metrics
