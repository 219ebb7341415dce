#!/usr/bin/env python3
"""A real Prometheus scrapes a real gateway, and the dashboard's queries return data.

  prometheus_scrape_test.py SOURCE_DIR BIN_DIR --prometheus=PATH [--redis_server=PATH]

Starts Debian's redis-server (a throwaway password, no persistence), imgw-emulator and imgw-gateway
from BIN_DIR on 127.0.0.1 (throwaway certificate and app secret), the gateway with the budget in
Redis as deploy/kubernetes/overlays/shared-budget runs it (--ratelimit_backend=redis, the
password from --redis_password_file), so that the shared-budget series exist; and Debian's prometheus (check_deploy.Prometheus, then its config swapped by SIGHUP)
scraping the gateway every second as job "imgw", with the target labels a PodMonitor or
deploy/prometheus/prometheus-scrape-example.yaml would add (imgw_sdkappid, container, namespace,
pod) and deploy/prometheus/imgw-rules.yaml loaded. Drives known traffic with imgw-cli, spread over
about 3 s, enqueues included (the durable queue, its file in the test's directory), and checks
through Prometheus' HTTP API:

- the target is up and the counters and histograms hold what the traffic implies, the shared
  budget's and the queue's included (every upstream request admitted by a permit from Redis, no
  fallback; every enqueued entry applied but the one dead-lettered);
- the process_* series hold what /proc says of the gateway process, and the secret-file series
  exist, at 0 (no file changed);
- every PromQL expression of the dashboard and the rules (Grafana variables replaced as
  check_deploy.py does) is accepted, and returns data unless listed in MAY_BE_EMPTY with the
  reason, or unless it reads a series of CLUSTER_SERIES (the kubelet's and kube-state-metrics',
  which no test here runs); an alert's expression without its thresholds returns data too;
- the rules loaded and evaluate without error, and no alert is pending or firing but
  ImgwQueueDeadLetters for the one dead letter the traffic makes (EXPECTED_ALERTS).

Prints a table of expression -> series returned. Exits 0 when all is well, else 1. Every wait is
bounded; every child is ended on the way out (and gets SIGTERM should this script die).
"""

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error

sys.dont_write_bytecode = True  # no __pycache__ in the source tree from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_deploy  # noqa: E402  (the expressions, the Prometheus runner, http, problem)
from check_deploy import problem  # noqa: E402

SDKAPPID = "1400000000"
# Target labels, as the PodMonitor / the scrape example set them. The dashboard and the rules sum
# the budget by imgw_sdkappid, ImgwSidecarDown and the "Sidecars up" panels select container="imgw".
TARGET_LABELS = {"imgw_sdkappid": SDKAPPID, "container": "imgw",
                 "namespace": "imgw-test", "pod": "imgw-test-0"}

# The traffic, every pair distinct so that nothing merges: one upstream request per call/item.
N_OK = 30            # SetMsgRead u<i> -> p<i>: OK, ErrorCode 0
N_NOT_FOUND = 3      # SetMsgRead g<i> -> ghost: NOT_FOUND, ErrorCode 90008 (emulator --missing_accounts)
N_INVALID = 2        # SetMsgRead x<i> -> x<i>: INVALID_ARGUMENT, no upstream request
BATCH_PEERS = ["b1", "b2", "b3", "b4", "b5"]  # one BatchSetMsgRead, report a: 5 OK items
# The queue: one EnqueueSetMsgRead q -> q0, and one BatchEnqueueSetMsgRead of report q whose
# last item repeats the first (it merges into that pending entry) and one of whose peers does
# not exist (90008: a dead letter at once). One upstream request per distinct pair.
QUEUE_SINGLE = "q0"
QUEUE_BATCH = ["q1", "q2", "ghost", "q1"]
QUEUE_NEW = 1 + len(set(QUEUE_BATCH))
QUEUE_MERGED = len(QUEUE_BATCH) - len(set(QUEUE_BATCH))
QUEUE_DEAD = 1  # the ghost
N_UPSTREAM = N_OK + N_NOT_FOUND + len(BATCH_PEERS) + QUEUE_NEW
SPREAD_SECONDS = 3.0

# Expressions that may return nothing after this healthy traffic, keyed by check_deploy's names.
# Every other expression must return at least one series with a finite value.
MAY_BE_EMPTY = {
    "dashboard panel 'Upstream failures by kind' (refId A)":
        "no transport or HTTP failure happened; imgw_upstream_failures_total{kind} series appear "
        "at the first failure of a kind",
    "rule ImgwBudgetNearSaturation":
        "%d requests in a few seconds are far below 90%% of 200/s" % N_UPSTREAM,
    "rule ImgwUpstreamRateLimited": "the emulator answered no 60007",
    "rule ImgwUpstreamErrorRate":
        "no failure and no error code besides 0 and 90008 (excluded: callers' data)",
    "rule ImgwUserSigExpiringSoon": "the UserSig was just made, valid for 24 h",
    "rule ImgwSidecarDown": "the gateway is up",
    "rule ImgwCircuitBreakerOpen": "nothing failed, the breaker stays closed",
    "rule ImgwCallsRejected":
        "the only rejections are invalid_argument, which the alert leaves out",
    "rule ImgwSharedBudgetFallback": "Redis stays up: the gateway never leaves the shared budget",
    "rule ImgwRedisErrors": "Redis stays up and answers in time: no Redis error",
    "rule ImgwCallerErrorRatio":
        "every call answered OK, NOT_FOUND or INVALID_ARGUMENT (the last two the caller's own)",
    "rule ImgwCallerLatencyHigh": "the calls are answered in milliseconds, far below 1 s",
    "rule ImgwSecretFileInvalid": "the key and Redis password files stay valid and unchanged",
    "rule ImgwQueueLagGrowing": "the queue drains in about a second",
    "rule ImgwQueueStoreErrors": "the queue's file takes every write",
}

# Alerts the traffic must set off, and only these, by their labels; any other alert pending or
# firing is a problem, and so is one of these missing.
EXPECTED_ALERTS = {
    "ImgwQueueDeadLetters": {"error_code": "90008", "pod": TARGET_LABELS["pod"]},
}

# Series the dashboard reads that imgw does not export: the cluster does, and this test runs no
# kubelet and no kube-state-metrics. An expression reading one of them must be accepted but may
# return nothing; every other series, the process_* and imgw_secret_* included, is the gateway's
# and must be there.
CLUSTER_SERIES = {
    "container_memory_working_set_bytes": "the kubelet's cAdvisor",
    "container_cpu_usage_seconds_total": "the kubelet's cAdvisor",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_pod_init_container_resource_limits": "kube-state-metrics",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_init_container_status_restarts_total": "kube-state-metrics",
}


def cluster_series_in(expr):
    """The CLUSTER_SERIES an expression reads, as "name (by source)"."""
    return ["%s (by %s)" % (n, src) for n, src in sorted(CLUSTER_SERIES.items())
            if re.search(r"\b%s\b" % n, expr)]


# Panels the traffic must fill (a substring of the panel title): a guard against the dashboard
# losing them or MAY_BE_EMPTY growing to cover them.
MUST_HAVE_DATA = [
    "Budget use", "Upstream calls/s", "gRPC latency", "gRPC status codes", "Upstream error codes",
    "Queue wait", "Upstream connections", "UserSig expiry", "Pace",
    # The row "Shared budget (Redis)": the gateway runs with the budget in Redis.
    "Shared budget active", "Replicas sharing the budget", "Shared rate vs local",
    "Fallbacks and Redis errors", "Redis admission round trip", "Admissions: Redis permits",
    # The row "Sidecar resources": what the gateway exports about its process and secret files.
    "imgw memory: RSS", "imgw CPU", "imgw open file descriptors", "imgw process uptime",
    "Secret files refused", "Secret file reloads", "Versions and SDKAppIDs",
    "Pods whose label imgw-sdkappid differs",
    # The row "Queue": the traffic enqueues, merges and dead-letters.
    "Queue backlog", "Queue: age of the oldest", "Queue: enqueued and refused",
    "Queue: applied vs the budget", "Queue: new dead letters", "Queue store: write latency",
]

CHILDREN = []       # subprocess.Popen of the emulator and the gateway
CHILDREN_PROM = []  # check_deploy.Prometheus


def die_with_parent():
    """preexec_fn: the child gets SIGTERM when this script dies (ctest's timeout kills us hard)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(argv, log_path, env):
    log = open(log_path, "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env, preexec_fn=die_with_parent)
    log.close()
    CHILDREN.append(p)
    return p


def stop_children():
    for p in CHILDREN:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in CHILDREN:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def tail(path, n=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def wait_ready_file(path, proc, what, log, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            try:
                with open(path) as f:
                    return json.load(f)
            except ValueError:
                pass  # being written
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("%s did not start within %.0fs (exit %s); its log:\n%s"
                       % (what, within, proc.poll(), tail(log)))


def query(server, expr):
    """(status, data) of an instant query now; data is Prometheus' "data" or an error string."""
    status, body = server.query(expr)
    try:
        answer = json.loads(body)
    except ValueError:
        return "error", "HTTP %s: %s" % (status, body[:300])
    if status != 200 or answer.get("status") != "success":
        return "error", "HTTP %s %s: %s" % (status, answer.get("errorType"), answer.get("error"))
    return "success", answer["data"]


def samples(data):
    """[(labels, float value)] of a query result (vector, scalar or matrix's last point)."""
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        return [(r["metric"], float(r["value"][1])) for r in result]
    if kind == "scalar":
        return [({}, float(result[1]))]
    if kind == "matrix":
        return [(r["metric"], float(r["values"][-1][1])) for r in result if r["values"]]
    return [({}, float("nan"))]


def value_of(server, expr):
    """The single value of expr, or None when it returns no series."""
    st, data = query(server, expr)
    if st != "success":
        raise RuntimeError("%s: %s" % (expr, data))
    s = samples(data)
    if len(s) > 1:
        raise RuntimeError("%s returns %d series, expected one" % (expr, len(s)))
    return s[0][1] if s else None


def http_get_json(url):
    status, body = check_deploy.http(url, timeout=5)
    if status != 200:
        raise RuntimeError("GET %s: HTTP %s: %s" % (url, status, body[:300]))
    return json.loads(body)["data"]


# ---------------------------------------------------------------------------------------------


def resp_command(sock, *args):
    """One Redis command over RESP; returns the reply's first line (b"+PONG", b"-ERR ...")."""
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("redis closed the connection")
        reply += chunk
    return reply.split(b"\r\n")[0]


def start_redis(redis_server, tmp, env, within=10.0):
    """Debian's redis-server on a free loopback port with a password and no persistence (as
    tests/testing/redis_server.h); returns (port, password) once it answers PING after AUTH."""
    password = os.urandom(12).hex()
    for attempt in range(3):
        port = check_deploy.free_port()
        data = os.path.join(tmp, "redis-%d" % attempt)
        os.mkdir(data)
        conf = os.path.join(data, "redis.conf")  # the password in a file, not on the command line
        with open(conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\n"
                    "logfile \"\"\ndir %s\nrequirepass %s\n" % (port, data, password))
        log = os.path.join(tmp, "redis-%d.log" % attempt)
        proc = spawn([redis_server, conf], log, env)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if resp_command(sock, "AUTH", password) == b"+OK" and \
                            resp_command(sock, "PING") == b"+PONG":
                        return port, password
            except OSError:
                pass
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        if "Address already in use" not in tail(log):
            raise RuntimeError("redis-server did not answer PING within %.0fs; its log:\n%s"
                               % (within, tail(log)))
    raise RuntimeError("redis-server could not bind a free port three times")


def wait_shared_budget(metrics_addr, log, within=10.0):
    """Until the gateway's own /metrics says the budget is decided in Redis (it connects on its
    own thread after starting): Prometheus then never sees a start-up fallback."""
    deadline, body = time.monotonic() + within, ""
    while time.monotonic() < deadline:
        try:
            _, body = check_deploy.http("http://%s/metrics" % metrics_addr, timeout=2)
        except (urllib.error.URLError, OSError):
            body = ""
        if re.search(r"^imgw_shared_budget_active(\{\})? 1(\.0*)?$", body, re.M):
            return
        time.sleep(0.05)
    raise RuntimeError("the gateway did not reach the shared budget in Redis within %.0fs; "
                       "its imgw_shared_budget_* and imgw_redis_* lines:\n%s\nits log:\n%s" % (
                           within, "\n".join(ln for ln in body.splitlines()
                                             if re.match(r"imgw_(shared_budget|redis)_", ln)),
                           tail(log)))


def start_upstream_and_gateway(bin_dir, tmp, env, redis_port, redis_password):
    cert, key, secret = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "secret_key"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    with open(secret, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    redis_pw = os.path.join(tmp, "redis_password")
    with open(redis_pw, "w") as f:
        f.write(redis_password + "\n")  # a trailing newline, as `kubectl create secret --from-file` may keep

    em_ready, em_log = os.path.join(tmp, "emulator.ready"), os.path.join(tmp, "emulator.log")
    em = spawn([os.path.join(bin_dir, "imgw-emulator"), "--listen=127.0.0.1:0",
                "--cert_file=" + cert, "--key_file=" + key, "--sdkappid=" + SDKAPPID,
                "--secret_key_file=" + secret, "--missing_accounts=ghost",
                "--ready_file=" + em_ready], em_log, env)
    port = wait_ready_file(em_ready, em, "imgw-emulator", em_log)["port"]

    gw_ready, gw_log = os.path.join(tmp, "gateway.ready"), os.path.join(tmp, "gateway.log")
    gw = spawn([os.path.join(bin_dir, "imgw-gateway"), "--grpc_listen=127.0.0.1:0",
                "--metrics_listen=127.0.0.1:0", "--endpoint=https://127.0.0.1:%d" % port,
                "--ca_file=" + cert, "--sdkappid=" + SDKAPPID, "--identifier=administrator",
                "--secret_key_file=" + secret, "--ready_file=" + gw_ready,
                "--queue_path=" + os.path.join(tmp, "gateway.queue.db"),
                # The budget in Redis, as overlays/shared-budget: the password from a file.
                "--ratelimit_backend=redis", "--redis_address=127.0.0.1:%d" % redis_port,
                "--redis_password_file=" + redis_pw, "--redis_fallback_replicas=1",
                # The longest allowed: on a loaded test machine a 50 ms Redis round trip would
                # send the gateway to its fallback and make the counts below vary.
                "--redis_timeout=1s"]
               # Extra flags (the sanitized runs lift --memory_limit: a sanitizer's shadow
               # memory would make the memory watch refuse calls).
               + os.environ.get("IMGW_GATEWAY_FLAGS", "").split(), gw_log, env)
    ready = wait_ready_file(gw_ready, gw, "imgw-gateway", gw_log)
    wait_shared_budget(ready["metrics_listen"], gw_log)
    return ready["grpc_listen"], ready["metrics_listen"], gw_log, gw.pid


def start_prometheus(binary, tmp, metrics_addr, rules):
    """check_deploy's runner (empty config), then the scrape config swapped in with SIGHUP."""
    server = check_deploy.Prometheus(binary, tmp)
    CHILDREN_PROM.append(server)
    # The runner starts prometheus with subprocess.Popen: have it die with us too.
    popen = subprocess.Popen

    def popen_dying_with_parent(*args, **kwargs):
        kwargs.setdefault("preexec_fn", die_with_parent)
        return popen(*args, **kwargs)

    subprocess.Popen = popen_dying_with_parent
    try:
        started = server.start()
    finally:
        subprocess.Popen = popen
    if not started:
        raise RuntimeError("prometheus did not start")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [{
            "job_name": "imgw",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [{"targets": [metrics_addr], "labels": TARGET_LABELS}],
        }],
    }
    with open(os.path.join(tmp, "prometheus.yml"), "w") as f:  # the file start() wrote
        check_deploy.yaml.safe_dump(config, f, sort_keys=False)
    server.proc.send_signal(signal.SIGHUP)
    # The reload took when the target is listed; then wait for its first successful scrape.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            targets = http_get_json(server.url + "/api/v1/targets?state=active")["activeTargets"]
        except (RuntimeError, urllib.error.URLError, OSError, ValueError):
            targets = []
        imgw = [t for t in targets if t.get("labels", {}).get("job") == "imgw"]
        if imgw and imgw[0].get("health") == "up":
            return server, imgw[0]
        time.sleep(0.1)
    raise RuntimeError("prometheus did not scrape %s successfully within 15s; targets: %s; log:\n%s"
                       % (metrics_addr, json.dumps(targets)[:1000], tail(server.log_path)))


def drive_traffic(bin_dir, target, env):
    cli = os.path.join(bin_dir, "imgw-cli")
    calls = []  # (argv tail, expected exit code, expected first word)
    for i in range(N_OK):
        calls.append((["set-msg-read", "--report=u%d" % i, "--peer=p%d" % i], 0, "OK"))
    for i in range(N_NOT_FOUND):
        calls.append((["set-msg-read", "--report=g%d" % i, "--peer=ghost"], 1, "NOT_FOUND"))
    for i in range(N_INVALID):
        calls.append((["set-msg-read", "--report=x%d" % i, "--peer=x%d" % i], 1, "INVALID_ARGUMENT"))
    batch = (["batch-set-msg-read", "--report=a", "--peer=" + ",".join(BATCH_PEERS)], 0, None)
    enqueue = (["enqueue-set-msg-read", "--report=q", "--peer=" + QUEUE_SINGLE], 0, "OK")
    batch_enqueue = (["batch-enqueue-set-msg-read", "--report=q", "--peer=" + ",".join(QUEUE_BATCH)],
                     0, None)
    # Interleave so each kind spreads over the whole period (and over several scrapes).
    order = calls[:N_OK // 2] + calls[N_OK:N_OK + 1] + calls[N_OK + N_NOT_FOUND:N_OK + N_NOT_FOUND + 1] \
        + [batch, enqueue] + calls[N_OK // 2:N_OK] + [batch_enqueue] + calls[N_OK + 1:N_OK + N_NOT_FOUND] \
        + calls[N_OK + N_NOT_FOUND + 1:]
    assert len(order) == len(calls) + 3
    start = time.monotonic()
    for n, (args, want_rc, want_word) in enumerate(order):
        due = start + SPREAD_SECONDS * n / (len(order) - 1)
        time.sleep(max(0.0, due - time.monotonic()))
        argv = [cli] + args + ["--target=" + target, "--deadline=10s"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
        out = r.stdout.strip()
        if args[0] == "batch-set-msg-read":
            lines = out.splitlines()
            ok = [ln for ln in lines if re.match(r"^\S+ OK ", ln)]
            if r.returncode != 0 or len(ok) != len(BATCH_PEERS):
                problem("imgw-cli %s: exit %d, expected %d OK items:\n%s\n%s"
                        % (" ".join(args), r.returncode, len(BATCH_PEERS), out, r.stderr))
        elif args[0] == "batch-enqueue-set-msg-read":
            # Stored, every item; the repeated pair merged into the entry its first item made.
            got = [tuple(ln.split()[:3]) for ln in out.splitlines() if re.match(r"^\S+ OK ", ln)]
            want = [(p, "OK", "merged" if p in QUEUE_BATCH[:i] else "new")
                    for i, p in enumerate(QUEUE_BATCH)]
            if r.returncode != 0 or got != want:
                problem("imgw-cli %s: exit %d, expected items %s:\n%s\n%s"
                        % (" ".join(args), r.returncode, want, out, r.stderr))
        elif r.returncode != want_rc or re.split(r"[: ]", out, maxsplit=1)[0] != want_word:
            problem("imgw-cli %s: exit %d %r, expected exit %d %s"
                    % (" ".join(args), r.returncode, out + r.stderr, want_rc, want_word))
    return time.monotonic() - start


# The counters after the traffic: (PromQL, expected value).
def expected_values():
    job = 'job="imgw"'
    return [
        ('up{%s}' % job, 1),
        ('sum(imgw_upstream_requests_total{%s})' % job, N_UPSTREAM),
        ('sum(imgw_upstream_request_duration_seconds_count{%s})' % job, N_UPSTREAM),
        ('imgw_queue_wait_seconds_count{%s}' % job, N_UPSTREAM),
        ('sum(imgw_upstream_answers_total{%s,error_code="0"})' % job,
         N_OK + len(BATCH_PEERS) + QUEUE_NEW - QUEUE_DEAD),
        ('sum(imgw_upstream_answers_total{%s,error_code="90008"})' % job, N_NOT_FOUND + QUEUE_DEAD),
        ('sum(imgw_upstream_answers_total{%s,error_code!~"0|90008"})' % job, 0),
        ('imgw_rejected_calls_total{%s,reason="invalid_argument"}' % job, N_INVALID),
        ('sum(imgw_rejected_calls_total{%s,reason!="invalid_argument"})' % job, 0),
        ('sum(imgw_merged_calls_total{%s})' % job, 0),
        ('sum(imgw_retries_total{%s})' % job, 0),
        ('imgw_grpc_server_handling_seconds_count{%s,method="SetMsgRead",code="OK"}' % job, N_OK),
        ('imgw_grpc_server_handling_seconds_count{%s,method="SetMsgRead",code="NOT_FOUND"}' % job,
         N_NOT_FOUND),
        ('imgw_grpc_server_handling_seconds_count{%s,method="SetMsgRead",code="INVALID_ARGUMENT"}'
         % job, N_INVALID),
        ('imgw_grpc_server_handling_seconds_count{%s,method="BatchSetMsgRead",code="OK"}' % job, 1),
        ('imgw_grpc_server_handling_seconds_count{%s,method="EnqueueSetMsgRead",code="OK"}' % job, 1),
        ('imgw_grpc_server_handling_seconds_count{%s,method="BatchEnqueueSetMsgRead",code="OK"}'
         % job, 1),
        ('sum(imgw_grpc_server_handling_seconds_count{%s})' % job, N_OK + N_NOT_FOUND + N_INVALID + 3),
        # The +Inf bucket holds every observation.
        ('sum(imgw_grpc_server_handling_seconds_bucket{%s,le="+Inf"})' % job,
         N_OK + N_NOT_FOUND + N_INVALID + 3),
        ('imgw_queued_upstream_calls{%s}' % job, 0),
        ('imgw_calls_in_progress{%s}' % job, 0),
        ('imgw_circuit_breaker_open{%s}' % job, 0),
        ('imgw_rate_limit_max_calls_per_second{%s}' % job, 200),
        ('imgw_build_info{%s}' % job, 1),
        # The shared budget: Redis admitted every upstream request, nothing fell back.
        ('imgw_shared_budget_active{%s}' % job, 1),
        ('imgw_shared_budget_recovering{%s}' % job, 0),
        ('imgw_redis_connected{%s}' % job, 1),
        ('imgw_shared_budget_replicas{%s}' % job, 1),
        ('imgw_shared_budget_permits_total{%s,outcome="used"}' % job, N_UPSTREAM),
        ('imgw_shared_budget_local_admissions_total{%s}' % job, 0),
        ('imgw_shared_budget_fallbacks_total{%s}' % job, 0),
        ('imgw_redis_errors_total{%s}' % job, 0),
        ('imgw_shared_budget_local_rate{%s}' % job, 0),
        # The secret files: both watched (the key, and the Redis password with the Redis
        # backend), neither refused, neither changed.
        ('imgw_secret_file_invalid{%s,secret="secret_key"}' % job, 0),
        ('imgw_secret_file_invalid{%s,secret="redis_password"}' % job, 0),
        ('sum(imgw_secret_reloads_total{%s})' % job, 0),
        # The queue: every distinct pair stored, the repeat merged, every entry applied but the
        # ghost's, a dead letter at once (90008, not retried); nothing left, nothing refused.
        ('imgw_queue_enqueued_total{%s,result="new"}' % job, QUEUE_NEW),
        ('imgw_queue_enqueued_total{%s,result="merged"}' % job, QUEUE_MERGED),
        ('sum(imgw_queue_enqueue_refused_total{%s})' % job, 0),
        ('imgw_queue_applied_total{%s}' % job, QUEUE_NEW - QUEUE_DEAD),
        ('imgw_queue_dead_letters_total{%s,error_code="90008"}' % job, QUEUE_DEAD),
        ('sum(imgw_queue_dead_letters_total{%s})' % job, QUEUE_DEAD),
        ('imgw_queue_dead_letters{%s}' % job, QUEUE_DEAD),
        ('sum(imgw_queue_retries_total{%s})' % job, 0),
        ('imgw_queue_pending{%s}' % job, 0),
        ('imgw_queue_in_flight{%s}' % job, 0),
        ('imgw_queue_oldest_pending_seconds{%s}' % job, 0),
        ('imgw_queue_store_errors_total{%s}' % job, 0),
    ]


def wait_for_final_counts(server, within=20.0):
    """Until the last scrape shows every expected value (or the deadline); then the mismatches."""
    deadline = time.monotonic() + within
    while True:
        wrong = []
        for expr, want in expected_values():
            try:
                got = value_of(server, expr)
            except (RuntimeError, urllib.error.URLError, OSError) as e:
                got = "error: %s" % e
            if got is None or isinstance(got, str) or abs(got - want) > 1e-9:
                wrong.append((expr, want, got))
        if not wrong or time.monotonic() >= deadline:
            return wrong
        time.sleep(0.25)


def check_other_values(server):
    job = 'job="imgw"'
    # Counters that must have moved but whose exact value the traffic does not fix.
    for expr, lo, hi in [
        ('imgw_upstream_connections_created_total{%s}' % job, 1, N_UPSTREAM),
        ('imgw_upstream_connections_open{%s}' % job, 1, N_UPSTREAM),
        ('imgw_usersig_expiry_seconds{%s}' % job, 3600, 86400 * 366),
        ('imgw_rate_limit_calls_per_second{%s}' % job, 1, 200),
        ('histogram_quantile(0.99, sum(rate(imgw_grpc_server_handling_seconds_bucket{%s}[1m])) by (le))'
         % job, 1e-6, 10),
        ('histogram_quantile(0.99, sum(rate(imgw_upstream_request_duration_seconds_bucket{%s}[1m])) by (le))'
         % job, 1e-6, 10),
        ('sum(rate(imgw_upstream_requests_total{%s}[1m]))' % job, 1e-3, 200),
        ('imgw_shared_budget_rate{%s}' % job, 150, 200),
        ('imgw_redis_acquire_seconds{%s,quantile="0.99"}' % job, 1e-6, 0.05),
        # Enqueues, settlements and claims: a few transactions of the queue's file at least.
        ('imgw_queue_store_write_seconds_count{%s}' % job, 2, 1e6),
    ]:
        got = value_of(server, expr)
        if got is None or math.isnan(got) or not lo <= got <= hi:
            problem("%s = %s, expected a number in [%g, %g]" % (expr, got, lo, hi))
        else:
            print("ok: %s = %.6g" % (expr, got))
    # The target labels reach the series the dashboard groups by.
    st, data = query(server, 'imgw_build_info{%s}' % job)
    labels = samples(data)[0][0] if st == "success" and samples(data) else {}
    for k, v in TARGET_LABELS.items():
        if labels.get(k) != v:
            problem("imgw_build_info has %s=%r, expected %r (target label)" % (k, labels.get(k), v))
    if not labels.get("version"):
        problem("imgw_build_info has no version label: %s" % labels)
    if labels.get("sdkappid") != SDKAPPID:
        problem("imgw_build_info has sdkappid=%r, expected the gateway's --sdkappid %s"
                % (labels.get("sdkappid"), SDKAPPID))


def proc_facts(pid):
    """What /proc says of a process: RSS and virtual size (bytes), CPU seconds, open fds, the
    soft limit on fds, and its start (Unix seconds)."""
    with open("/proc/%d/status" % pid) as f:
        status = dict(ln.split(":", 1) for ln in f if ":" in ln)
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        btime = int([ln for ln in f if ln.startswith("btime ")][0].split()[1])
    with open("/proc/%d/limits" % pid) as f:
        soft = [ln for ln in f if ln.startswith("Max open files")][0].split()[3]
    return {
        "rss": int(status["VmRSS"].split()[0]) * 1024,
        "vsize": int(status["VmSize"].split()[0]) * 1024,
        "cpu": (int(stat[11]) + int(stat[12])) / tck,  # utime, stime (fields 14, 15)
        "fds": len(os.listdir("/proc/%d/fd" % pid)),
        "max_fds": float("inf") if soft == "unlimited" else int(soft),
        "start": btime + int(stat[19]) / tck,  # starttime (field 22)
    }


def check_process_values(server, pid):
    """The standard process_* series, against /proc of the gateway: the scrape is at most about a
    second old, so the gauges that move are compared with a margin."""
    job = 'job="imgw"'
    facts = proc_facts(pid)
    checks = [
        ("process_resident_memory_bytes", facts["rss"] / 2, facts["rss"] * 2),
        ("process_virtual_memory_bytes", facts["vsize"] / 2, facts["vsize"] * 2),
        ("process_cpu_seconds_total", 0, facts["cpu"] + 1),
        ("process_open_fds", max(1, facts["fds"] - 16), facts["fds"] + 16),
        ("process_max_fds", facts["max_fds"], facts["max_fds"]),
        ("process_start_time_seconds", facts["start"] - 2, facts["start"] + 2),
    ]
    for name, lo, hi in checks:
        expr = "%s{%s}" % (name, job)
        try:
            got = value_of(server, expr)
        except RuntimeError as e:
            problem(str(e))
            continue
        if got is None:
            problem("%s: no series; the gateway must export the standard process metrics" % expr)
        elif math.isnan(got) or not lo <= got <= hi:
            problem("%s = %s, expected %g to %g (from /proc/%d)" % (expr, got, lo, hi, pid))
        else:
            print("ok: %s = %.6g (/proc: %g to %g)" % (expr, got, lo, hi))


def check_sdkappid_labels(root, server):
    """The dashboard's label check counts no pod here: the target label imgw_sdkappid is the
    gateway's --sdkappid."""
    _, exprs = check_deploy.dashboard_exprs(root)
    hits = [(w, e) for w, e in exprs if "differs from --sdkappid" in w]
    if not hits:
        problem("the dashboard has no panel \"Pods whose label imgw-sdkappid differs from --sdkappid\"")
    for where, raw in hits:
        got = value_of(server, check_deploy.substitute(raw))
        if got != 0:
            problem("%s = %s, expected 0 (imgw_sdkappid equals --sdkappid here)" % (where, got))
        else:
            print("ok: %s = 0" % where)


# A comparison with a number: an alert's threshold, or a floor beside it (`... > 0.05 and ... >= 5`).
THRESHOLD = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*(?:bool\s+)?-?[0-9][0-9.eE+]*(?![\w.])")


def check_expressions(root, server):
    _, exprs = check_deploy.dashboard_exprs(root)
    exprs += check_deploy.rules_exprs(root)
    rows, known = [], set()
    for where, raw in exprs:
        known.add(where)
        expr = check_deploy.substitute(raw)
        variants = [(where, expr)]
        bare = THRESHOLD.sub(" ", expr).strip()
        if where.startswith("rule ") and bare != expr.strip():
            variants.append((where + " without its thresholds", bare))
        for name, e in variants:
            st, data = query(server, e)
            if st != "success":
                problem("%s: Prometheus refused the expression (%s)\n  %s" % (name, data, e))
                rows.append((name, "refused", "", e))
                continue
            s = samples(data)
            finite = [v for _, v in s if not math.isnan(v) and not math.isinf(v)]
            allowed = MAY_BE_EMPTY.get(name)
            cluster = cluster_series_in(e)
            if cluster and not allowed:
                allowed = "reads %s, not exported by imgw" % ", ".join(cluster)
            if not s and allowed:
                verdict = "empty, allowed: " + allowed
            elif not s:
                verdict = "EMPTY"
                problem("%s returns no series after the traffic, although it should:\n  %s" % (name, e))
            elif not finite:
                verdict = "NO FINITE VALUE"
                problem("%s returns %d series but no finite value: %s\n  %s"
                        % (name, len(s), [v for _, v in s], e))
            else:
                verdict = "ok"
            rows.append((name, len(s), len(finite), verdict))
    for must in MUST_HAVE_DATA:
        hits = [r for r in rows if must in r[0] and r[0].startswith("dashboard panel")]
        if not hits:
            problem("no dashboard panel titled like %r: it must show data after traffic" % must)
        for r in hits:
            if r[0] in MAY_BE_EMPTY:
                problem("%s is in MAY_BE_EMPTY but must show data" % r[0])
    for stale in sorted(set(MAY_BE_EMPTY) - known):
        print("note: MAY_BE_EMPTY names %r, which the dashboard and rules no longer have" % stale)

    width = max(len(r[0]) for r in rows)
    print("\n%-*s  %6s  %6s  %s" % (width, "expression", "series", "finite", "verdict"))
    for name, n, finite, verdict in rows:
        print("%-*s  %6s  %6s  %s" % (width, name, n, finite, verdict))
    print()
    return len(exprs)


def check_rules_and_alerts(server, within=5.0):
    """The rule group loaded and evaluated without error; the alerts of EXPECTED_ALERTS fire (the
    traffic's dead letter), and no other alert is pending or firing."""
    deadline = time.monotonic() + within
    while True:
        groups = http_get_json(server.url + "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g.get("rules", [])]
        unevaluated = [r for r in rules if r.get("health") == "unknown"]
        firing = {r.get("name") for r in rules for a in r.get("alerts", []) or []
                  if a.get("state") == "firing"}
        if rules and not unevaluated and set(EXPECTED_ALERTS) <= firing \
                or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if not rules:
        problem("prometheus loaded no rule from deploy/prometheus/imgw-rules.yaml")
    for r in rules:
        name = r.get("name")
        if r.get("health") != "ok":
            problem("rule %s: health %s %s" % (name, r.get("health"), r.get("lastError", "")))
        want = EXPECTED_ALERTS.get(name)
        alerts = r.get("alerts", []) or []
        for a in alerts:
            labels = a.get("labels", {})
            if want is None or any(labels.get(k) != v for k, v in want.items()):
                problem("alert %s is %s after the traffic, which should not set it off: %s"
                        % (name, a.get("state"), labels))
            else:
                print("ok: alert %s is %s, as the traffic implies: %s" % (name, a.get("state"), labels))
        if want is not None and not any(a.get("state") == "firing" for a in alerts):
            problem("alert %s does not fire within %.0fs after the traffic (expected labels %s): %s"
                    % (name, within, want, alerts))
    print("ok: %d rules loaded, evaluated: %s" % (len(rules), ", ".join(
        "%s=%s" % (r.get("name"), r.get("health")) for r in rules)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source_dir")
    ap.add_argument("bin_dir")
    ap.add_argument("--prometheus", default="")
    ap.add_argument("--redis_server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    a = ap.parse_args()
    root, bin_dir = os.path.abspath(a.source_dir), os.path.abspath(a.bin_dir)
    # ctest's timeout sends SIGTERM on some platforms: end through finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("prometheus_scrape_test: terminated"))

    for b in ("imgw-emulator", "imgw-gateway", "imgw-cli"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            problem("%s not found in %s: build it first (ninja imgw-gateway imgw-emulator imgw-cli)"
                    % (b, bin_dir))
    if not os.access(a.redis_server, os.X_OK):
        problem("redis-server not found (%s): install Debian's package redis-server (.ci/deps "
                "does); the gateway under test keeps its budget in Redis" % a.redis_server)
    if check_deploy.PROBLEMS or not check_deploy.need_tool(a.prometheus, "prometheus"):
        return 1

    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "grpc_proxy"):
        env.pop(k, None)
    # Our own HTTP requests to Prometheus (urllib honours the proxy variables) go direct too.
    os.environ.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")

    tmp = tempfile.mkdtemp(prefix="imgw-prom-scrape-")
    gw_log = None
    t0 = time.monotonic()
    try:
        redis_port, redis_password = start_redis(a.redis_server, tmp, env)
        print("redis-server: 127.0.0.1:%d (%.1fs)" % (redis_port, time.monotonic() - t0))
        target, metrics_addr, gw_log, gw_pid = start_upstream_and_gateway(
            bin_dir, tmp, env, redis_port, redis_password)
        print("gateway: grpc %s, metrics http://%s (%.1fs)" % (target, metrics_addr, time.monotonic() - t0))
        server, tgt = start_prometheus(a.prometheus, tmp, metrics_addr,
                                       check_deploy.rules_path(root))
        print("prometheus: %s scrapes %s, labels %s (%.1fs)"
              % (server.url, tgt.get("scrapeUrl"), tgt.get("labels"), time.monotonic() - t0))

        took = drive_traffic(bin_dir, target, env)
        print("traffic: %d calls, one batch of %d, one enqueue and one batch enqueue of %d in %.1fs (%.1fs)"
              % (N_OK + N_NOT_FOUND + N_INVALID, len(BATCH_PEERS), len(QUEUE_BATCH), took,
                 time.monotonic() - t0))

        t1 = time.monotonic()
        wrong = wait_for_final_counts(server)
        for expr, want, got in wrong:
            problem("%s = %s, expected %s (after waiting 20s for the scrapes)" % (expr, got, want))
        if not wrong:
            print("ok: the last scrape holds the final counts (waited %.1fs):" % (time.monotonic() - t1))
            for expr, want in expected_values():
                print("  %s == %g" % (expr, want))
        check_other_values(server)
        check_process_values(server, gw_pid)
        check_sdkappid_labels(root, server)
        n = check_expressions(root, server)
        print("%d dashboard and rule expressions checked (%.1fs)" % (n, time.monotonic() - t0))
        check_rules_and_alerts(server)
    except (RuntimeError, subprocess.SubprocessError, OSError, urllib.error.URLError) as e:
        problem(str(e))
    finally:
        for s in CHILDREN_PROM:
            s.stop()
        stop_children()
        if check_deploy.PROBLEMS and gw_log:
            print("--- gateway log (tail):\n" + tail(gw_log))
        shutil.rmtree(tmp, ignore_errors=True)
    print("total %.1fs" % (time.monotonic() - t0))
    if check_deploy.PROBLEMS:
        print("%d problem%s" % (len(check_deploy.PROBLEMS), "" if len(check_deploy.PROBLEMS) == 1 else "s"))
        return 1
    print("all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
