#!/usr/bin/env python3
"""Runs every benchmark scenario of imgw on loopback and prints Markdown: the scenario table, a
note on how its Rate column is counted, then the targets met or missed.

Called by bench/run, which builds the Release binaries first. Each scenario starts its own
processes (imgw-emulator over HTTPS with a throwaway certificate, imgw-gateway, or
imgw-noop-server), drives them with imgw-loadgen, reads the emulator's counters and the
gateway's /proc entries, then stops them. Figures are printed, never asserted: the exit status
is 0 whenever every scenario ran, whatever the figures (a target missed says "no" in the table).

Scenarios (the distance rows are also in the README, "The upstream far away"):
  ceiling   the same closed-loop load against imgw-noop-server (the most any gRPC server can
            answer on this machine) and against imgw with its limit and the emulator's lifted
  pooling   the imgw ceiling again with --reuse_connections=false
  budget    5x the limit for 20 s at the real 200/s: upstream calls per second at the emulator,
            for one gateway (local budget) and for three replicas sharing Redis
  distance  the same with the emulator far away: round trips of 20, 50, 100 and 250 ms with
            +-10% jitter, over HTTP/1.1 and HTTP/2, one gateway and three sharing Redis
  merging   20,000 calls/s over 100 hot pairs for 10 s
  latency   100 calls/s of distinct pairs for 20 s, end to end, with the local budget and with
            the budget in Redis (the added latency of a Redis admission)
  memory    the gateway's peak RSS idle, and with 100,000 calls waiting (--max_queued=100000)
  queue     EnqueueSetMsgRead acknowledged per second (fsync on and off), a burst of 1,000/s
            for 20 s absorbed and drained, a million entries pending, a restart on them
            (bench/queue_scenarios.py)
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import queue_scenarios  # noqa: E402

SDKAPPID = "1400000000"
ADMIN = "administrator"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


class Proc:
    """A child process with its output in files of the work directory."""

    def __init__(self, work, name, argv):
        self.name = name
        self.err_path = os.path.join(work, name + ".err")
        self.out_path = os.path.join(work, name + ".out")
        self.popen = subprocess.Popen(
            argv,
            stdout=open(self.out_path, "w"),
            stderr=open(self.err_path, "w"),
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self):
        return self.popen.pid

    def cpu_seconds(self):
        """utime + stime of the process (all its threads), from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key):
        """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def stderr_tail(self):
        with open(self.err_path) as f:
            return f.read()[-2000:]


def wait_ready(path, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return json.load(f)
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not start:\n{proc.stderr_tail()}")


class Bench:
    def __init__(self, bin_dir, work):
        self.bin = bin_dir
        self.work = work
        self.sdkappid = SDKAPPID
        self.procs = []
        self.cert = os.path.join(work, "cert.pem")
        self.key = os.path.join(work, "key.pem")
        self.secret = os.path.join(work, "secret_key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", self.key, "-out", self.cert],
            check=True, capture_output=True)
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        self.tls = ssl.create_default_context(cafile=self.cert)
        self.counter = 0

    def start(self, name, argv):
        self.counter += 1
        ready = os.path.join(self.work, f"{name}-{self.counter}.ready")
        proc = Proc(self.work, f"{name}-{self.counter}", argv + [f"--ready_file={ready}"])
        self.procs.append(proc)
        return proc, wait_ready(ready, proc)

    def emulator(self, rate_limit, *flags):
        """The emulator over HTTPS/1.1 on loopback, as the earlier tables measured it, unless
        `flags` say otherwise (the last --http2 wins)."""
        proc, ready = self.start("emulator", [
            f"{self.bin}/imgw-emulator", "--listen=127.0.0.1:0", f"--cert_file={self.cert}",
            f"--key_file={self.key}", f"--sdkappid={SDKAPPID}",
            f"--secret_key_file={self.secret}", f"--rate_limit={rate_limit}", "--http2=false",
            *flags])
        proc.url = f"https://127.0.0.1:{ready['port']}"
        return proc

    def gateway(self, emulator, *flags):
        proc, ready = self.start("gateway", [
            f"{self.bin}/imgw-gateway", "--grpc_listen=127.0.0.1:0",
            "--metrics_listen=127.0.0.1:0", f"--endpoint={emulator.url}",
            f"--ca_file={self.cert}", f"--sdkappid={SDKAPPID}", f"--identifier={ADMIN}",
            f"--secret_key_file={self.secret}", "--log_level=warning",
            f"--queue_path={self.work}/gateway-{self.counter + 1}.queue.db", *flags])
        proc.target = ready["grpc_listen"]
        proc.metrics = ready["metrics_listen"]
        return proc

    def noop(self):
        proc, ready = self.start("noop", [f"{self.bin}/imgw-noop-server",
                                          "--listen=127.0.0.1:0"])
        proc.target = ready["grpc_listen"]
        return proc

    def redis(self):
        """A redis-server on a free loopback port, with a password, nothing persisted."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.counter += 1
        proc = Proc(self.work, f"redis-{self.counter}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--requirepass", "bench-password"])
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"AUTH bench-password\r\nPING\r\n")
                    if b"PONG" in conn.recv(100):
                        proc.address = f"127.0.0.1:{port}"
                        return proc
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{proc.stderr_tail()}")

    def redis_flags(self, redis):
        os.environ["IMGW_REDIS_PASSWORD"] = "bench-password"
        return ["--ratelimit_backend=redis", f"--redis_address={redis.address}"]

    def metrics(self, gateway):
        """The gateway's /metrics samples: {"name{labels}": value}."""
        with urllib.request.urlopen(f"http://{gateway.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stats(self, emulator):
        with urllib.request.urlopen(emulator.url + "/emulator/stats", context=self.tls,
                                    timeout=10) as r:
            return json.load(r)

    def reset(self, emulator):
        req = urllib.request.Request(emulator.url + "/emulator/reset", data=b"", method="POST")
        urllib.request.urlopen(req, context=self.tls, timeout=10).read()

    def loadgen_start(self, target, *flags):
        self.counter += 1
        proc = Proc(self.work, f"loadgen-{self.counter}",
                    [f"{self.bin}/imgw-loadgen", f"--target={target}", "--format=json",
                     *flags])
        self.procs.append(proc)
        return proc

    def loadgen_result(self, proc, timeout):
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
            raise RuntimeError(f"imgw-loadgen ran over {timeout} s")
        if proc.popen.returncode != 0:
            raise RuntimeError(f"imgw-loadgen exited {proc.popen.returncode}:\n"
                               f"{proc.stderr_tail()}")
        with open(proc.out_path) as f:
            return json.load(f)

    def loadgen(self, target, duration_s, *flags):
        proc = self.loadgen_start(target, f"--duration={duration_s}s", *flags)
        return self.loadgen_result(proc, duration_s + 120)

    def stop_all(self):
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []


def ok_share(result):
    answered = result["answered"]
    return result["codes"].get("OK", 0) / answered if answered else 0.0


def closed_loop_ceiling(bench, server, duration, concurrency):
    """Runs the closed loop against `server`; returns the loadgen result and CPU per call."""
    cpu_before = server.cpu_seconds()
    result = bench.loadgen(server.target, duration, "--mode=closed",
                           f"--concurrency={concurrency}", "--pairs=distinct",
                           "--deadline=10s")
    cpu = server.cpu_seconds() - cpu_before
    per_call_us = cpu / result["answered"] * 1e6 if result["answered"] else float("nan")
    return result, per_call_us


def scenario_ceiling(bench, rows, args):
    lifted = ["--rate_limit=1000000", "--rate_burst=1000", "--max_queued=100000",
              f"--max_connections={args.connections}"]
    noop = bench.noop()
    noop_result, noop_cpu = closed_loop_ceiling(bench, noop, args.ceiling_duration,
                                                args.concurrency)
    bench.stop_all()

    results = {}
    for name, extra in (("imgw", []), ("imgw, no pooling", ["--reuse_connections=false"])):
        emulator = bench.emulator(0)
        gateway = bench.gateway(emulator, *lifted, *extra)
        result, cpu = closed_loop_ceiling(bench, gateway, args.ceiling_duration,
                                          args.concurrency)
        upstream = bench.stats(emulator)["calls"]
        results[name] = (result, cpu, upstream)
        bench.stop_all()

    def add(scenario, server, result, cpu, ratio_of=None):
        lat = result["latency_ms"]
        rate = result["rate"]
        cells = [f"{rate:,.0f} calls/s", f"{lat['p50']:.2f} / {lat['p99']:.2f} ms",
                 f"{cpu:.0f} µs"]
        note = f"OK {ok_share(result):.1%}"
        if ratio_of is not None:
            base_result, base_cpu = ratio_of
            note += (f"; vs no-op: {rate / base_result['rate']:.2f}x rate, "
                     f"{cpu / base_cpu:.1f}x CPU per call")
        rows.append([scenario, server] + cells + [note])

    add("ceiling", f"imgw-noop-server (c={args.concurrency})", noop_result, noop_cpu)
    imgw_result, imgw_cpu, _ = results["imgw"]
    add("ceiling", "imgw, limits lifted", imgw_result, imgw_cpu, (noop_result, noop_cpu))
    np_result, np_cpu, _ = results["imgw, no pooling"]
    add("pooling", "imgw, limits lifted, --reuse_connections=false", np_result, np_cpu,
        (noop_result, noop_cpu))
    ratio = imgw_cpu / noop_cpu
    pool_gain = imgw_result["rate"] / np_result["rate"] if np_result["rate"] else float("nan")
    return {
        "ceiling_cpu_ratio": ratio,
        "pooling_gain": pool_gain,
    }


def scenario_budget(bench, args, replicas=1, emulator_flags=()):
    """5x overload at the real limit, spread over `replicas` gateways (sharing a Redis when
    more than one), the emulator made far away by `emulator_flags`: what reaches the emulator,
    per second, and what the callers and the gateways saw."""
    limit = 200
    emulator = bench.emulator(limit, *emulator_flags)
    flags = bench.redis_flags(bench.redis()) if replicas > 1 else []
    gateways = [bench.gateway(emulator, *flags) for _ in range(replicas)]
    duration = args.budget_duration
    warmup = 2.0 if replicas == 1 and not emulator_flags else 3.0
    bench.reset(emulator)
    procs = [bench.loadgen_start(gateway.target, f"--duration={duration}s", "--mode=open",
                                 f"--rate={5 * limit / replicas:.0f}", "--pairs=distinct",
                                 f"--seed={i + 1}", "--deadline=2s", "--threads=1",
                                 "--channels=2")
             for i, gateway in enumerate(gateways)]
    start = time.monotonic()
    time.sleep(warmup)
    first = bench.stats(emulator)["calls"]
    first_t = time.monotonic()
    time.sleep(max(0.0, start + duration - 0.2 - time.monotonic()))
    last = bench.stats(emulator)["calls"]
    last_t = time.monotonic()
    results = [bench.loadgen_result(proc, duration + 60) for proc in procs]
    time.sleep(0.5)  # The last answers' way back from a far emulator.
    stats = bench.stats(emulator)
    metrics = [bench.metrics(gateway) for gateway in gateways]
    bench.stop_all()
    mean = (last - first) / (last_t - first_t)

    def total(code):
        return sum(r["codes"].get(code, 0) for r in results)

    def gateway_total(name):
        return sum(m.get(name, 0) for m in metrics)
    return {
        "mean": mean,
        "share": mean / limit,
        "max_window": stats["max_calls_in_window"],
        "throttled": stats["errors"].get("60007", 0),
        "applied": stats["ok"],
        "ok": total("OK"),
        "exhausted": total("RESOURCE_EXHAUSTED"),
        "late": total("DEADLINE_EXCEEDED"),
        "answered": sum(r["answered"] for r in results),
        "timeouts": gateway_total(
            'imgw_upstream_failures_total{api="admin_set_msg_read",kind="timeout"}'),
        "connections": stats.get("connections", 0),
        "limit": limit,
    }


def scenario_distance(bench, args, rows, targets):
    """The budget with the upstream far away: round trips of 20 to 250 ms with +-10% jitter,
    over HTTP/1.1 and HTTP/2, one gateway and three sharing Redis."""
    for rtt in args.distances:
        for http2 in (False, True):
            for replicas in (1, 3):
                flags = [f"--latency_ms={rtt}", f"--jitter_ms={rtt // 10}",
                         f"--http2={'true' if http2 else 'false'}"]
                setup = (f"{rtt} ms ±{rtt // 10}, HTTP/{'2' if http2 else '1.1'}, "
                         f"{'one gateway' if replicas == 1 else 'three gateways sharing Redis'}")
                log(f"distance {setup} ...")
                b = scenario_budget(bench, args, replicas, flags)
                rows.append(["distance", f"{setup}: 5x for {args.budget_duration} s",
                             f"{b['mean']:.1f} upstream calls/s", "", "",
                             f"{b['share']:.1%} of the limit; max {b['max_window']} in a sliding "
                             f"second, {b['throttled']} x 60007; {b['ok']:,} OK, "
                             f"{b['exhausted']:,} RESOURCE_EXHAUSTED, {b['late']} "
                             f"DEADLINE_EXCEEDED; {b['timeouts']:.0f} upstream timeouts; "
                             f"{b['applied']:,} applied; {b['connections']} connections"])
                targets.append([f"budget used >= 98% of the limit ({setup})",
                                f"{b['share']:.1%}", yes(b["share"] >= 0.98)])
                targets.append([f"none over the limit, no 60007, none late, timed out or "
                                f"applied twice ({setup})",
                                f"max {b['max_window']}, {b['throttled']}, {b['late']}, "
                                f"{b['timeouts']:.0f}, {b['applied'] - b['ok']}",
                                yes(b["max_window"] <= b["limit"] and b["throttled"] == 0
                                    and b["late"] == 0 and b["timeouts"] == 0
                                    and b["applied"] == b["ok"])])


def scenario_merging(bench, args):
    emulator = bench.emulator(200)
    # --memory_limit lifted, as in the memory rows: this measures merging, and the default
    # budget (40% of 128 MiB) holds about 2,900 calls, far fewer than wait here.
    gateway = bench.gateway(emulator, "--memory_limit=16Gi")
    bench.reset(emulator)
    result = bench.loadgen(gateway.target, args.merging_duration, "--mode=open",
                           f"--rate={args.merging_rate}", "--pairs=uniform",
                           "--pair_count=100", "--deadline=10s")
    stats = bench.stats(emulator)
    bench.stop_all()
    return result, stats


def scenario_latency(bench, args, redis=False):
    emulator = bench.emulator(200)
    gateway = bench.gateway(emulator, *(bench.redis_flags(bench.redis()) if redis else []))
    # A short warm-up: the first calls open the upstream connections and sign the UserSig.
    bench.loadgen(gateway.target, 1, "--mode=open", "--rate=100", "--pairs=distinct",
                  "--seed=7")
    result = bench.loadgen(gateway.target, args.latency_duration, "--mode=open", "--rate=100",
                           "--pairs=distinct", "--deadline=5s")
    bench.stop_all()
    return result


def wait_gauge(gateway, name, want, timeout):
    """Polls the gateway's /metrics until gauge `name` reaches `want`; returns its last value."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{gateway.metrics}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    value = float(line.rsplit(" ", 1)[1])
        if value >= want:
            return value
        time.sleep(0.5)
    return value


def scenario_memory(bench, args):
    # Deadlines long enough for the whole queue: the gateway refuses at once (RESOURCE_EXHAUSTED)
    # a call it cannot start before its deadline, so at 198 calls/s a queue of 100,000 needs
    # deadlines over 505 s.
    deadline = f"{int(args.memory_calls / 150) + 60}s"
    emulator = bench.emulator(200)
    # --memory_limit lifted: this measures what calls held cost, which the default budget
    # (40% of 128 MiB) would cap at about 2,900.
    gateway = bench.gateway(emulator, f"--max_queued={args.memory_calls}",
                            f"--default_deadline={deadline}", "--memory_limit=16Gi")
    # Idle: started, a few calls answered (connections, UserSig and gRPC's pools set up).
    bench.loadgen(gateway.target, 1, "--mode=open", "--rate=10", "--pairs=distinct")
    time.sleep(1)
    idle_rss = gateway.status_kib("VmRSS")
    idle_hwm = gateway.status_kib("VmHWM")
    # Waiting: loadgens keep calls in flight (distinct pairs, nothing merges) while the gateway
    # answers 200/s; first the default --max_queued (10,000), then memory_calls in all.
    levels = []
    running = 0
    for level in sorted({min(10000, args.memory_calls), args.memory_calls}):
        # Long enough to outlast the waits below (a closed loop stops replacing answered calls
        # at the end of its duration); killed once measured.
        proc = bench.loadgen_start(gateway.target, "--duration=300s", "--mode=closed",
                                   f"--concurrency={level - running}", "--pairs=distinct",
                                   f"--seed={level}", f"--deadline={deadline}",
                                   # The gateway takes 1,024 streams per connection
                                   # (--max_streams_per_connection).
                                   f"--channels={max(16, (level - running) // 1000 + 2)}")
        running = level
        # Calls held by the gateway (the two loadgens draw the same pair names, so some calls
        # merge: calls held, not upstream requests queued, is what costs memory).
        queued = wait_gauge(gateway, "imgw_calls_in_progress", level * 0.97, 90)
        time.sleep(1)
        levels.append((level, queued, gateway.status_kib("VmRSS"), gateway.status_kib("VmHWM")))
    for proc in bench.procs:
        if os.path.basename(proc.name).startswith("loadgen"):
            proc.popen.kill()
            proc.popen.wait()
    bench.stop_all()
    return {"idle_rss": idle_rss, "idle_hwm": idle_hwm, "levels": levels}


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB, "
            f"Linux {platform.release()}, {time.strftime('%Y-%m-%d')}")


def yes(ok):
    return "yes" if ok else "**no**"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="build-release/bin")
    parser.add_argument("--only", default="ceiling,budget,distance,merging,latency,memory,queue",
                        help="comma-separated scenarios to run")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (a smoke test of this script; figures meaningless)")
    parser.add_argument("--ceiling_duration", type=int, default=10)
    parser.add_argument("--budget_duration", type=int, default=20)
    parser.add_argument("--merging_duration", type=int, default=10)
    parser.add_argument("--merging_rate", type=int, default=20000)
    parser.add_argument("--latency_duration", type=int, default=20)
    parser.add_argument("--memory_calls", type=int, default=100000)
    parser.add_argument("--queue_duration", type=int, default=10)
    parser.add_argument("--queue_burst", type=int, default=20)
    parser.add_argument("--queue_fill", type=int, default=1000000)
    parser.add_argument("--queue_redis_backlog", type=int, default=6000,
                        help="entries three replicas drain through the queue in Redis")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--distances", default="20,50,100,250",
                        help="round trips of the distance scenario, ms, comma-separated")
    args = parser.parse_args()
    args.distances = [int(d) for d in args.distances.split(",") if d]
    if args.quick:
        args.ceiling_duration = args.merging_duration = args.latency_duration = 2
        args.budget_duration = 4
        args.merging_rate = 2000
        args.memory_calls = 2000
        args.queue_duration = 2
        args.queue_burst = 2
        args.queue_fill = 20000
        args.queue_redis_backlog = 1500
        args.distances = [100]
    only = set(args.only.split(","))
    for binary in ("imgw-emulator", "imgw-gateway", "imgw-loadgen", "imgw-noop-server"):
        if not os.access(os.path.join(args.bin, binary), os.X_OK):
            sys.exit(f"bench: {args.bin}/{binary} not found; build first (bench/run does)")
    if shutil.which("redis-server") is None:
        sys.exit("bench: redis-server not found (Debian package redis-server; .ci/deps installs it)")
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    work = tempfile.mkdtemp(prefix="imgw-bench-")
    bench = Bench(os.path.abspath(args.bin), work)
    rows = []  # scenario, setup, rate, p50/p99, CPU per call, notes
    targets = []  # target, figure, met
    try:
        if "ceiling" in only:
            log("ceiling and pooling ...")
            ceiling = scenario_ceiling(bench, rows, args)
            targets.append(["gateway CPU per call within 4x the no-op server's (ceiling)",
                            f"{ceiling['ceiling_cpu_ratio']:.1f}x",
                            yes(ceiling["ceiling_cpu_ratio"] <= 4)])
        if "budget" in only:
            log("budget ...")
            for replicas, setup, share in (
                    (1, "one gateway, local budget", 0.98),
                    (3, "three gateways sharing Redis", 0.95)):
                b = scenario_budget(bench, args, replicas)
                rows.append(["budget", f"{setup}: 1,000 calls/s offered (5x) for "
                             f"{args.budget_duration} s", f"{b['mean']:.1f} upstream calls/s",
                             "", "", f"{b['share']:.1%} of the limit; max {b['max_window']} in "
                             f"a sliding second, {b['throttled']} x 60007; {b['ok']:,} OK, "
                             f"{b['exhausted']:,} RESOURCE_EXHAUSTED"])
                targets.append([f"budget used >= {share:.0%} of the limit ({setup})",
                                f"{b['share']:.1%}", yes(b["share"] >= share)])
                targets.append([f"no sliding second over the limit of 200 ({setup})",
                                f"max {b['max_window']}", yes(b["max_window"] <= b["limit"])])
        if "distance" in only:
            scenario_distance(bench, args, rows, targets)
        if "merging" in only:
            log("merging ...")
            result, stats = scenario_merging(bench, args)
            lat = result["latency_ms"]
            rows.append(["merging", f"{args.merging_rate:,} calls/s over 100 hot pairs for "
                         f"{args.merging_duration} s", f"{result['rate']:,.0f} calls/s",
                         f"{lat['p50']:.1f} / {lat['p99']:.1f} ms", "",
                         f"{result['codes'].get('OK', 0):,} OK of {result['sent']:,} sent"
                         + (f" ({result['not_sent']:,} due but not sent: the loadgen fell "
                            f"behind)" if result["not_sent"] else "") + "; "
                         f"{stats['calls']:,} upstream calls "
                         f"(max {stats['max_calls_in_window']} in a second)"])
        if "latency" in only:
            log("latency ...")
            local = None
            for redis in (False, True):
                result = scenario_latency(bench, args, redis)
                lat = result["latency_ms"]
                note = (f"p99.9 {lat['p999']:.2f} ms, max {lat['max']:.2f} ms; "
                        f"OK {ok_share(result):.1%}")
                if local is not None:
                    note += (f"; added by Redis: p50 {lat['p50'] - local['p50']:+.2f} ms, "
                             f"p99 {lat['p99'] - local['p99']:+.2f} ms")
                rows.append(["latency", f"100 calls/s, distinct pairs, {args.latency_duration}"
                             f" s, {'budget in Redis' if redis else 'local budget'}",
                             f"{result['rate']:,.0f} calls/s",
                             f"{lat['p50']:.2f} / {lat['p99']:.2f} ms", "", note])
                targets.append([f"p99 under 2 ms at 100 calls/s "
                                f"({'Redis' if redis else 'local'} budget)",
                                f"{lat['p99']:.2f} ms", yes(lat["p99"] < 2)])
                local = lat
        if "memory" in only:
            log("memory ...")
            m = scenario_memory(bench, args)
            rows.append(["memory", "gateway idle", "", "", "",
                         f"RSS {m['idle_rss'] / 1024:.1f} MiB "
                         f"(peak {m['idle_hwm'] / 1024:.1f} MiB)"])
            targets.append(["RSS idle under 30 MB", f"{m['idle_hwm'] * 1024 / 1e6:.1f} MB",
                            yes(m["idle_hwm"] * 1024 < 30e6)])
            for level, queued, rss, hwm in m["levels"]:
                per_call = (rss - m["idle_rss"]) * 1024 / max(queued, 1)
                rows.append(["memory", f"{level:,} calls waiting", "", "", "",
                             f"RSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB) with "
                             f"{queued:,.0f} calls held: {per_call / 1024:.1f} KiB per waiting "
                             f"call"])
            level, queued, rss, hwm = m["levels"][-1]
            targets.append([f"RSS under 150 MB with {level:,} calls waiting",
                            f"{hwm * 1024 / 1e6:.0f} MB with {queued:,.0f} calls held",
                            yes(hwm * 1024 < 150e6 and queued >= 0.97 * level)])
        if "queue" in only:
            queue_scenarios.run(bench, args, rows, targets, log, yes)
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print(f"Machine: {machine()}\n")
    print("| Scenario | Setup | Rate | p50 / p99 | Server CPU per call | Notes |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nRate: in the budget and distance rows, upstream calls per second at the emulator "
          "in the steady state (from 2 s after the load starts, 3 s with Redis or a far "
          "emulator, to 0.2 s before it ends); in the ceiling, pooling, merging and latency "
          "rows, calls answered (any status, answers after the end included) over the nominal "
          "duration, start-up included, so not a steady-state figure. Server CPU per call is "
          "the whole run's CPU over the calls answered.")
    if targets:
        print("\n| Target | Measured | Met |")
        print("|---|---|---|")
        for row in targets:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
