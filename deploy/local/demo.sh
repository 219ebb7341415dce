#!/usr/bin/env bash
# Runs imgw on this machine against the bundled emulator of the upstream and sends demo calls:
#   deploy/local/demo.sh [BIN_DIR] [--keep]
# BIN_DIR defaults to build/bin. Everything listens on 127.0.0.1 only, on free ports. A
# throwaway certificate, key and app secret are made in a temporary directory. With --keep the
# gateway and emulator stay up until Ctrl-C. Exits non-zero if any demo call misbehaves.
# IMGW_GATEWAY_FLAGS: extra imgw-gateway flags, split on spaces (the sanitized test runs lift
# --memory_limit with it).
set -euo pipefail

bin=build/bin
keep=false
for arg in "$@"; do
  case "$arg" in
    --keep) keep=true ;;
    *) bin=$arg ;;
  esac
done
for b in imgw-emulator imgw-gateway imgw-cli; do
  [[ -x $bin/$b ]] || { echo "demo: $bin/$b not found; build first (.ci/build)" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Waits (at most 15 s) for a ready file and prints its content.
wait_ready() {
  for _ in $(seq 150); do
    [[ -s $1 ]] && { cat "$1"; return 0; }
    sleep 0.1
  done
  echo "demo: $2 did not start; its log:" >&2
  cat "$3" >&2
  return 1
}

step "A throwaway TLS certificate for 127.0.0.1 and an app secret key"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
openssl rand -hex 32 >"$work/secret_key"
echo "certificate: $work/cert.pem"

step "The emulator of admin_set_msg_read (HTTPS, 200 calls/s, account 'ghost' does not exist)"
"$bin/imgw-emulator" --listen=127.0.0.1:0 --cert_file="$work/cert.pem" --key_file="$work/key.pem" \
  --sdkappid=1400000000 --secret_key_file="$work/secret_key" --missing_accounts=ghost \
  --ready_file="$work/emulator.ready" 2>"$work/emulator.log" &
pids+=($!)
emulator_port=$(wait_ready "$work/emulator.ready" emulator "$work/emulator.log" | sed 's/[^0-9]//g')
upstream="https://127.0.0.1:$emulator_port"
echo "emulator: $upstream"

step "The gateway: gRPC on loopback, upstream over verified TLS"
"$bin/imgw-gateway" --grpc_listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --endpoint="$upstream" --ca_file="$work/cert.pem" \
  --sdkappid=1400000000 --identifier=administrator --secret_key_file="$work/secret_key" \
  --ready_file="$work/gateway.ready" --queue_path="$work/queue.db" ${IMGW_GATEWAY_FLAGS:-} \
  2>"$work/gateway.log" &
pids+=($!)
ready=$(wait_ready "$work/gateway.ready" gateway "$work/gateway.log")
target=$(sed 's/.*"grpc_listen":"\([^"]*\)".*/\1/' <<<"$ready")
metrics=$(sed 's/.*"metrics_listen":"\([^"]*\)".*/\1/' <<<"$ready")
echo "gateway: $target (metrics and probes on http://$metrics)"

failures=0
# expect EXIT_CODE FIRST_WORD -- imgw-cli arguments...
expect() {
  local want_rc=$1 want_word=$2
  shift 3
  local out rc=0
  out=$("$bin/imgw-cli" set-msg-read --target="$target" "$@") || rc=$?
  echo "\$ imgw-cli set-msg-read $*"
  echo "  $out"
  if [[ $rc -ne $want_rc || ${out%%[: ]*} != "$want_word" ]]; then
    echo "  ^ expected exit $want_rc and $want_word" >&2
    failures=$((failures + 1))
  fi
}

step "Demo calls"
now=$(date +%s)
expect 0 OK -- --report=dramon1 --peer=dramon2 --time="$now"
expect 0 OK -- --report=dramon1 --peer=dramon3
expect 1 NOT_FOUND -- --report=dramon1 --peer=ghost
expect 1 INVALID_ARGUMENT -- --report=dramon1 --peer=dramon1

step "One BatchSetMsgRead: four items, one for an account that does not exist"
echo "\$ imgw-cli batch-set-msg-read --report=dramon1 --peer=dramon4,dramon5,ghost,dramon4"
batch=$("$bin/imgw-cli" batch-set-msg-read --target="$target" --report=dramon1 \
  --peer=dramon4,dramon5,ghost,dramon4) || true
echo "$batch" | sed 's/^/  /'
if [[ $(grep -c " OK " <<<"$batch") -ne 3 ]] || ! grep -q "^ghost NOT_FOUND" <<<"$batch"; then
  echo "  ^ expected three OK items and ghost NOT_FOUND" >&2
  failures=$((failures + 1))
fi

step "50 calls at once, distinct pairs"
rcs=()
for i in $(seq 50); do
  "$bin/imgw-cli" set-msg-read --target="$target" --report="user$i" --peer=dramon2 \
    >/dev/null &
  rcs+=($!)
done
ok=0
for pid in "${rcs[@]}"; do wait "$pid" && ok=$((ok + 1)); done
echo "answered OK: $ok of 50"
[[ $ok -eq 50 ]] || failures=$((failures + 1))

step "A burst into the durable queue: 1,000 EnqueueSetMsgRead items at once, then the drain"
peers=$(seq -s, -f 'peer%g' 500)
acked=0
for report in burst1 burst2; do
  echo "\$ imgw-cli batch-enqueue-set-msg-read --report=$report --peer=peer1,...,peer500"
  out=$("$bin/imgw-cli" batch-enqueue-set-msg-read --target="$target" --report="$report" \
    --peer="$peers") || true
  acked=$((acked + $(grep -c " OK " <<<"$out")))
  echo "  $(tail -1 <<<"$out")"
done
echo "acknowledged (stored durably in $work/queue.db): $acked of 1000"
[[ $acked -eq 1000 ]] || failures=$((failures + 1))
drained=false
for _ in $(seq 20); do
  stats=$("$bin/imgw-cli" queue-stats --target="$target" | head -1)
  echo "  $stats"
  if [[ $stats == "pending=0 "* ]]; then drained=true; break; fi
  sleep 1
done
$drained || { echo "  ^ expected the queue to drain within 20 s" >&2; failures=$((failures + 1)); }

step "What the emulator saw (GET $upstream/emulator/stats)"
stats=$(curl -sS --cacert "$work/cert.pem" "$upstream/emulator/stats")
echo "${stats:0:600} ..."

step "What the gateway counted (GET http://$metrics/metrics, non-zero series)"
curl -sS "http://$metrics/metrics" | grep -E '^imgw_(upstream_requests|upstream_answers|rejected_calls|merged_calls|grpc_server_handling_seconds_count|upstream_connections|queue_(enqueued|applied)_total)' |
  grep -v ' 0$' || true
echo "readiness: $(curl -sS "http://$metrics/readyz")"

step "The gateway's log"
cat "$work/gateway.log"

if $keep; then
  step "Running until Ctrl-C: imgw-cli set-msg-read --target=$target --report=A --peer=B"
  wait "${pids[1]}"
fi

if ((failures > 0)); then
  echo "demo: $failures unexpected answers" >&2
  exit 1
fi
step "Demo passed"
