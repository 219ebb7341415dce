#!/usr/bin/env bash
# Runs the upstream HTTP client candidates side by side against a local nginx and prints a
# Markdown table: per client, the median requests/s and CPU µs per request over REPEATS runs
# (the runs alternate between clients: A B C A B C ..., as the machine is shared and noisy).
#
#   bench/http_clients/run.sh            # after building the imgw-bench-http-clients target
#
# Environment: BUILD_DIR (build), BIN (the benchmark binary), REQUESTS (30000), IN_FLIGHT (64),
# REPEATS (3), ABLATION=1 (also curl-lean's variants, one libcurl change at a time),
# PERF=1 (then one more run per client under `perf stat`: syscalls and context switches per
# request, over the warm-up and the measured requests both), ONLY (a regex on the case names).
#
# nginx (Debian's nginx-light) listens twice on loopback with a throwaway certificate: one port
# offers HTTP/2 over ALPN (HTTP/1.1 otherwise), the other only HTTP/1.1 (the "h1-only" cases:
# what CurlClient, which always offers h2, does against an HTTP/1.1 upstream). Every client
# verifies the certificate (an IP SAN for 127.0.0.1) except h2load, which never does.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${BUILD_DIR:-build}/bin/imgw-bench-http-clients}
REQUESTS=${REQUESTS:-30000}
IN_FLIGHT=${IN_FLIGHT:-64}
REPEATS=${REPEATS:-3}
WARMUP=1000
ONLY=${ONLY:-.}
# Exit status: 0, or 1 when a client could not run at all (partial failures are in the table's
# OK column), 2 for a usage error, 77 when a tool is missing (CTest's smoke test skips then).
for tool in nginx h2load openssl python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 77; }
done
[[ -x $BIN ]] || { echo "no $BIN: build the imgw-bench-http-clients target" >&2; exit 2; }
if [[ ${PERF:-0} == 1 ]] && ! command -v perf >/dev/null; then
  echo "PERF=1 needs perf (linux-perf)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/imgw-http-clients.XXXXXX)
nginx_pid=
# shellcheck disable=SC2317  # Called by the EXIT trap.
cleanup() {
  if [[ -n $nginx_pid ]]; then
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
h2_port=$(free_port)
h1_port=$(free_port)
answer='{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}'
cat >"$work/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$h2_port ssl http2;
    listen 127.0.0.1:$h1_port ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location / { default_type application/json; return 200 '$answer'; }
  }
}
EOF
nice nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$h2_port") 2>/dev/null &&
    (exec 3<>"/dev/tcp/127.0.0.1/$h1_port") 2>/dev/null; then
    break
  fi
  sleep 0.1
done

h2_url=https://127.0.0.1:$h2_port
h1_url=https://127.0.0.1:$h1_port
common=(--ca_file="$work/cert.pem" --requests="$REQUESTS" --warmup="$WARMUP"
  --in_flight="$IN_FLIGHT")
# h2load's request: the same path, query, headers and body (one fixed random).
printf '%s' '{"Report_Account":"u1234567","Peer_Account":"p1234567","MsgReadTime":1764633600}' \
  >"$work/body.json"
usersig=$(printf 'eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwpbhzh3Mx8KCcXl3lUn6TT%.0s' 1 2 3 4)
path="/v4/openim/admin_set_msg_read?sdkappid=1400000000&identifier=administrator"
path+="&usersig=$usersig&random=123456789&contenttype=json"

# The cases: "name|command". Each prints imgw-bench-http-clients' key=value line.
cases=(
  "imgw (UpstreamClient: nghttp2)|$BIN --client=imgw --url=$h2_url"
  "imgw, h1-only server (libcurl)|$BIN --client=imgw --url=$h1_url"
  "curl|$BIN --client=curl --url=$h2_url"
  "curl, h1-only server|$BIN --client=curl --url=$h1_url"
  "curl-lean|$BIN --client=curl-lean --url=$h2_url"
  "curl-lean --http1|$BIN --client=curl-lean --http1 --url=$h2_url"
  "nghttp2|$BIN --client=nghttp2 --url=$h2_url"
  "beast|$BIN --client=beast --url=$h2_url"
  "h2load|h2load"
)
if [[ ${ABLATION:-0} == 1 ]]; then
  # curl-lean with one change at a time (main.cc's --lean_* flags): the URL as CurlClient hands
  # it over, or pre-parsed; libcurl driven by socket events instead of curl_multi_perform.
  lean="$BIN --client=curl-lean"
  cases+=(
    "curl-lean --lean_url=string|$lean --lean_url=string --url=$h2_url"
    "curl-lean --lean_url=curlu|$lean --lean_url=curlu --url=$h2_url"
    "curl-lean --lean_socket_action|$lean --lean_socket_action --url=$h2_url"
    "curl-lean --http1 --lean_url=string|$lean --http1 --lean_url=string --url=$h2_url"
    "curl-lean --http1 --lean_socket_action|$lean --http1 --lean_socket_action --url=$h2_url"
  )
fi

# Runs one case ($2) with an optional wrapper ($1: "perf"); prints its key=value line.
run_case() {
  local wrapper=$1 command=$2 out="$work/out" perf_out="$work/perf"
  local -a wrap=()
  if [[ $wrapper == perf ]]; then
    # shellcheck disable=SC2054  # The commas separate perf's events.
    wrap=(perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -o "$perf_out" --)
  fi
  if [[ $command == h2load ]]; then
    # One connection, IN_FLIGHT streams, as the nghttp2 client. CPU from time(1); handshake
    # and start-up included (h2load has no warm-up).
    nice /usr/bin/time -f "cpu %U %S" -o "$work/time" "${wrap[@]}" h2load -n "$REQUESTS" -c 1 \
      -m "$IN_FLIGHT" -d "$work/body.json" -H 'content-type: application/json' \
      "$h2_url$path" >"$out" 2>&1 || true
    awk -v n="$REQUESTS" '
      /^finished in/ { rps = $4 }
      /^status codes:/ { ok = $3 }
      FILENAME ~ /time$/ && $1 == "cpu" { cpu = ($2 + $3) * 1e6 / n }
      END { printf "client=h2load protocol=h2 ok=%d requests_per_s=%.0f cpu_us_per_request=%.2f\n",
                   ok, rps, cpu }' "$out" "$work/time"
  else
    # shellcheck disable=SC2086  # $command is words on purpose.
    nice "${wrap[@]}" $command "${common[@]}" >"$out" 2>"$work/err" || true
    if ! grep -q '^client=' "$out"; then
      echo "client=failed protocol=none ok=0 requests_per_s=0 cpu_us_per_request=0"
      sed 's/^/    /' "$work/err" >&2
      return
    fi
    cat "$out"
  fi
  if [[ $wrapper == perf ]]; then
    local per=$REQUESTS
    [[ $command != h2load ]] && per=$((REQUESTS + WARMUP))
    awk -F, -v n="$per" '
      $3 == "task-clock" { cpu = $1 * 1000 / n }
      $3 == "context-switches" { cs = $1 / n }
      $3 == "raw_syscalls:sys_enter" { sc = $1 / n }
      END { printf "perf task_clock_us_per_request=%.2f syscalls_per_request=%.2f context_switches_per_request=%.3f\n",
                   cpu, sc, cs }' "$perf_out"
  fi
}

field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p"; }

results="$work/results"
: >"$results"
status=0
for ((r = 1; r <= REPEATS; r++)); do
  for i in "${!cases[@]}"; do
    name=${cases[$i]%%|*}
    [[ $name =~ $ONLY ]] || continue
    line=$(run_case "" "${cases[$i]#*|}")
    echo "run $r: $name: $line" >&2
    [[ $line == client=failed* ]] && status=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$(field protocol <<<"$line")" \
      "$(field requests_per_s <<<"$line")" "$(field cpu_us_per_request <<<"$line")" \
      "$(field ok <<<"$line")" >>"$results"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
span() { sort -g | sed -n '1p;$p' | paste -sd' ' | awk '{ print $1 "–" $2 }'; }

echo
echo "$REQUESTS requests, $IN_FLIGHT in flight, $REPEATS runs each (medians; min–max):"
echo
echo "| client | protocol | requests/s | CPU µs/request | CPU min–max | requests/s min–max | OK (of $REQUESTS) |"
echo "|---|---|---:|---:|---:|---:|---:|"
for i in "${!cases[@]}"; do
  name=${cases[$i]%%|*}
  rows=$(awk -F'\t' -v i="$i" '$1 == i' "$results")
  [[ -n $rows ]] || continue
  protocol=$(cut -f2 <<<"$rows" | head -1)
  rps=$(cut -f3 <<<"$rows" | median)
  cpu=$(cut -f4 <<<"$rows" | median)
  cpu_range=$(cut -f4 <<<"$rows" | span)
  rps_range=$(cut -f3 <<<"$rows" | span)
  ok=$(cut -f5 <<<"$rows" | sort -g | head -1)
  printf '| %s | %s | %.0f | %.1f | %s | %s | %s |\n' "$name" "$protocol" "$rps" "$cpu" \
    "$cpu_range" "$rps_range" "$ok"
done

if [[ ${PERF:-0} == 1 ]]; then
  echo
  echo "perf stat, one run each (per request, warm-up included; the tracepoint adds CPU):"
  echo
  echo "| client | syscalls/request | context switches/request | task-clock µs/request |"
  echo "|---|---:|---:|---:|"
  for i in "${!cases[@]}"; do
    name=${cases[$i]%%|*}
    [[ $name =~ $ONLY ]] || continue
    line=$(run_case perf "${cases[$i]#*|}" | grep '^perf ' || true)
    printf '| %s | %s | %s | %s |\n' "$name" "$(field syscalls_per_request <<<"$line")" \
      "$(field context_switches_per_request <<<"$line")" \
      "$(field task_clock_us_per_request <<<"$line")"
  done
fi
exit "$status"
