#!/usr/bin/env bash
# with_gateway.sh BIN_DIR COMMAND [ARG...]: runs COMMAND against the real imgw-gateway and
# imgw-emulator from BIN_DIR, both on loopback with free ports, and exits with its status.
# The gateway's gRPC address is exported as IMGW_TARGET and replaces @TARGET@ wherever an ARG
# holds it (--target=@TARGET@); its /metrics address likewise as IMGW_METRICS and @METRICS@.
# The emulator lacks the account `ghost`; the gateway runs at --rate_limit=5 and --max_queued=4
# so that a client's bursts are refused in part, with retry-after hints it must honour.
# COMMAND runs under `timeout ${IMGW_CLIENT_TIMEOUT:-120}`; both servers are stopped and their
# files removed on exit, and the gateway's log tail is printed when COMMAND fails.
# IMGW_GATEWAY_FLAGS: extra imgw-gateway flags, split on spaces.
set -euo pipefail
bin=$1
shift
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
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

timeout 30 openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
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
  --ready_file="$work/gateway.ready" --queue_path="$work/queue.db" ${IMGW_GATEWAY_FLAGS:-} \
  2>"$work/gateway.log" &
pids+=($!)
ready=$(wait_ready "$work/gateway.ready" gateway "$work/gateway.log")
export IMGW_TARGET IMGW_METRICS
IMGW_TARGET=$(sed 's/.*"grpc_listen":"\([^"]*\)".*/\1/' <<<"$ready")
IMGW_METRICS=$(sed 's/.*"metrics_listen":"\([^"]*\)".*/\1/' <<<"$ready")
args=("${@//@TARGET@/$IMGW_TARGET}")
args=("${args[@]//@METRICS@/$IMGW_METRICS}")

status=0
timeout "${IMGW_CLIENT_TIMEOUT:-120}" "${args[@]}" || status=$?
if ((status != 0)); then
  echo "with_gateway.sh: $1 exited with $status; the gateway's log ends:" >&2
  tail -n 20 "$work/gateway.log" >&2
fi
exit "$status"
