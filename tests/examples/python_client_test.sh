#!/usr/bin/env bash
# examples/python/imgw_client.py against the real gateway and emulator (loopback, free ports):
#   python_client_test.sh BIN_DIR PYTHON3
# The stubs are generated first (examples/python/generate.sh). The gateway runs at
# --rate_limit=5 and --max_queued=4 so that the client's bursts are refused in part, with
# retry-after hints it must honour, by hand and through the README's retry policy. Exits with the client's status.
set -euo pipefail
bin=$1
python=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

wait_ready() {
  for _ in $(seq 150); do
    [[ -s $1 ]] && { cat "$1"; return 0; }
    sleep 0.1
  done
  echo "$2 did not start:" >&2
  cat "$3" >&2
  return 1
}

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
openssl rand -hex 32 >"$work/secret_key"
"$bin/imgw-emulator" --listen=127.0.0.1:0 --cert_file="$work/cert.pem" --key_file="$work/key.pem" \
  --sdkappid=1400000000 --secret_key_file="$work/secret_key" --missing_accounts=ghost \
  --ready_file="$work/emulator.ready" 2>"$work/emulator.log" &
pids+=($!)
port=$(wait_ready "$work/emulator.ready" emulator "$work/emulator.log" | sed 's/[^0-9]//g')
"$bin/imgw-gateway" --grpc_listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --endpoint="https://127.0.0.1:$port" --ca_file="$work/cert.pem" --rate_limit=5 --max_queued=4 \
  --sdkappid=1400000000 --identifier=administrator --secret_key_file="$work/secret_key" \
  --ready_file="$work/gateway.ready" 2>"$work/gateway.log" &
pids+=($!)
ready=$(wait_ready "$work/gateway.ready" gateway "$work/gateway.log")
target=$(sed 's/.*"grpc_listen":"\([^"]*\)".*/\1/' <<<"$ready")
metrics=$(sed 's/.*"metrics_listen":"\([^"]*\)".*/\1/' <<<"$ready")

PYTHON=$python "$src/examples/python/generate.sh" "$work/gen"
PYTHONPATH="$work/gen" timeout 120 "$python" "$src/examples/python/imgw_client.py" \
  --target="$target" --missing=ghost --metrics="http://$metrics/metrics"
