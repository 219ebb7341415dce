#!/usr/bin/env python3
"""Runs every benchmark scenario of imgw on loopback and prints Markdown: the scenario table, a
note on how its Rate column is counted, then the targets met or missed.

Called by bench/run, which builds the Release binaries first. Each scenario starts its own
processes (imgw-emulator over HTTPS with a throwaway certificate, imgw-gateway, or
imgw-noop-server), drives them with imgw-loadgen, reads the emulator's counters and the
gateway's /proc entries, then stops them. Figures are printed, never asserted: the exit status
is 0 whenever every scenario ran, whatever the figures (a target missed says "no" in the table).

Scenarios (the distance rows are also in the README, "The upstream far away"):
  ceiling   CPU per call, in --ceiling_runs rounds side by side: imgw-noop-server (the gRPC
            half: the least any gRPC server spends per call here), h2load POSTing to nginx over
            TLS and HTTP/2 (the HTTPS half, bench/https_anchor.py), and imgw with its limit
            lifted against the same nginx, whose CPU per call is reported against the sum of
            the two; then imgw with every call merged (one pair) and with nearly every call
            refused at once, against the no-op server; then imgw against the emulator
  pooling   the imgw ceiling against the emulator again with --reuse_connections=false
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

Plots (bench/plots.py, with matplotlib: Debian's python3-matplotlib, in /usr/bin/python3, which
bench/run uses), written to --plots_dir (docs/perf by default) for the scenarios that ran:
  budget-one-gateway.png     budget, distance: upstream calls/s over time against the limit,
  budget-three-gateways.png  one line per setup (the emulator's count of the sliding second
                             before each poll, polled every 0.25 s)
  latency-cdf.png            latency: end-to-end latency CDFs, imgw (local budget, budget in
                             Redis) beside imgw-noop-server
  queue-burst.png            queue: the burst's backlog and lag (the oldest entry's age) over time
Without matplotlib the scenarios run and print as ever, and no plot is written.
"""

import argparse
import http.client
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
import https_anchor  # noqa: E402
import plots  # noqa: E402
import queue_scenarios  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDKAPPID = "1400000000"
ADMIN = "administrator"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25  # How often scenario_budget samples the emulator's calls, in seconds.


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

    def thread_cpu(self):
        """CPU seconds by thread name ("imgw-dispatch", gRPC's threads, ...)."""
        cpu = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
                fields = tail.split()
                name = head.split("(", 1)[1]
                cpu[name] = cpu.get(name, 0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, IndexError):
                pass  # The thread ended.
        return cpu

    def thread_cpu_split(self):
        """The CPU per call of each kind of thread over the last closed_loop_ceiling(), the
        largest first: "imgw-dispatch 80, gRPC 50, imgw-front 20, other 3 µs"."""
        before, after, calls = self.split
        groups = {}
        for name, seconds in after.items():
            group = name if name in ("imgw-dispatch", "imgw-front", "imgw-queue") else (
                "gRPC" if not name.startswith("imgw") else "other")
            groups[group] = groups.get(group, 0) + seconds - before.get(name, 0)
        parts = sorted(groups.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {seconds / max(calls, 1) * 1e6:.0f}" for name, seconds in parts
                         if seconds > 0) + " µs"

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

    def calls_poller(self, emulator):
        """A function returning (when, calls, calls_last_second): the emulator's `calls`, the
        calls of the second before its stats (counted by the emulator, on its own clock, so that
        no network delay skews it), and the time its stats were taken, over one kept-alive
        HTTPS/1.1 connection, opened now (a poll every 0.25 s would otherwise cost a TLS
        handshake each, several round trips of a far emulator, and add to the connections in
        the stats). `when` is halfway from the request to the answer's headers: the emulator's
        path latency delays both halves alike."""
        host, port = emulator.url.split("://", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=self.tls, timeout=10)
        conn.connect()

        def poll():
            for attempt in (1, 2):
                sent = time.monotonic()
                try:
                    conn.request("GET", "/emulator/stats")
                    with conn.getresponse() as r:
                        when = (sent + time.monotonic()) / 2
                        stats = json.load(r)
                    return when, stats["calls"], stats["calls_last_second"]
                except (http.client.HTTPException, OSError):
                    conn.close()  # The next request opens a new connection.
                    if attempt == 2:
                        raise
        return poll

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


def closed_loop_ceiling(bench, server, duration, concurrency, *flags, deadline="10s"):
    """Runs the closed loop against `server` (distinct pairs unless `flags` say otherwise);
    returns the loadgen result and the server's CPU per call."""
    cpu_before = server.cpu_seconds()
    threads_before = server.thread_cpu()
    result = bench.loadgen(server.target, duration, "--mode=closed",
                           f"--concurrency={concurrency}", "--pairs=distinct", *flags,
                           f"--deadline={deadline}")
    cpu = server.cpu_seconds() - cpu_before
    server.split = (threads_before, server.thread_cpu(), result["answered"])
    per_call_us = cpu / result["answered"] * 1e6 if result["answered"] else float("nan")
    return result, per_call_us


def scenario_ceiling(bench, rows, args):
    """The CPU per call of imgw against its anchors, measured side by side in each of
    `ceiling_runs` rounds: the no-op gRPC server (the gRPC half), h2load against nginx (the
    HTTPS half) and imgw against the same nginx (both), with limits lifted and distinct pairs,
    so that every call is its own upstream request; then one pair (every call merged), and calls
    refused at once (the budget at 200/s, deadlines of 100 ms). The emulator rows and the
    pooling row follow, as before."""
    lifted = ["--rate_limit=1000000", "--rate_burst=1000", "--max_queued=100000",
              f"--max_connections={args.connections}"]
    rounds = []
    for _ in range(args.ceiling_runs):
        noop = bench.noop()
        noop_result, noop_cpu = closed_loop_ceiling(bench, noop, args.ceiling_duration,
                                                    args.concurrency)
        bench.stop_all()
        nginx = https_anchor.Nginx(bench.work, bench.cert, bench.key)
        try:
            calls = max(3000, int(noop_result["rate"] * args.ceiling_duration / 2))
            h2_rate, h2_cpu, h2_ok = https_anchor.h2load(bench.work, nginx.url, calls,
                                                         args.concurrency)
            gateway = bench.gateway(nginx, *lifted)
            result, cpu = closed_loop_ceiling(bench, gateway, args.ceiling_duration,
                                              args.concurrency)
            threads = gateway.thread_cpu_split()
            bench.stop_all()
        finally:
            nginx.stop()
        rounds.append({"noop": (noop_result, noop_cpu), "h2load": (h2_rate, h2_cpu / calls * 1e6,
                                                                  h2_ok, calls),
                       "imgw": (result, cpu), "threads": threads})

    def add(scenario, server, result, cpu, note):
        lat = result["latency_ms"]
        rows.append([scenario, server, f"{result['rate']:,.0f} calls/s",
                     f"{lat['p50']:.2f} / {lat['p99']:.2f} ms", f"{cpu:.0f} µs",
                     f"OK {ok_share(result):.1%}" + (f"; {note}" if note else "")])

    ratios = []
    for i, r in enumerate(rounds, 1):
        noop_result, noop_cpu = r["noop"]
        h2_rate, h2_cpu, h2_ok, calls = r["h2load"]
        result, cpu = r["imgw"]
        anchor = noop_cpu + h2_cpu
        ratios.append(cpu / anchor)
        run = f"run {i} of {len(rounds)}: "
        add("ceiling", f"{run}imgw-noop-server (c={args.concurrency})", noop_result, noop_cpu,
            "the gRPC half")
        rows.append(["ceiling", f"{run}h2load → nginx (TLS, HTTP/2, {args.concurrency} streams)",
                     f"{h2_rate:,.0f} calls/s", "", f"{h2_cpu:.0f} µs",
                     f"{h2_ok:,} of {calls:,} OK; the HTTPS half (h2load's own CPU)"])
        add("ceiling", f"{run}imgw → nginx, limits lifted, distinct pairs", result, cpu,
            f"**{cpu / anchor:.2f}x** the sum of the two halves ({anchor:.0f} µs); "
            f"{noop_result['rate'] and result['rate'] / noop_result['rate']:.2f}x the no-op's "
            f"rate; by thread: {r['threads']}")

    # Every call for one pair: merged, one upstream request per round trip.
    noop_result, noop_cpu = rounds[-1]["noop"]
    nginx = https_anchor.Nginx(bench.work, bench.cert, bench.key)
    try:
        gateway = bench.gateway(nginx, *lifted)
        merged, merged_cpu = closed_loop_ceiling(bench, gateway, args.ceiling_duration,
                                                 args.concurrency, "--pairs=uniform",
                                                 "--pair_count=1")
        merged_split = gateway.thread_cpu_split()
        bench.stop_all()
        # Refused at once: the real limit, and deadlines no wait at 200/s fits.
        gateway = bench.gateway(nginx, "--rate_limit=200", "--max_queued=100000")
        refused, refused_cpu = closed_loop_ceiling(bench, gateway, args.ceiling_duration,
                                                   args.concurrency, deadline="100ms")
        refused_split = gateway.thread_cpu_split()
        bench.stop_all()
    finally:
        nginx.stop()
    add("ceiling", "imgw → nginx, limits lifted, one pair (every call merged)", merged,
        merged_cpu, f"{merged_cpu / noop_cpu:.2f}x the no-op's CPU per call (run "
        f"{len(rounds)}'s); by thread: {merged_split}")
    add("ceiling", "imgw → nginx at 200/s, deadlines 100 ms (nearly all refused at once)",
        refused, refused_cpu,
        f"{refused['codes'].get('RESOURCE_EXHAUSTED', 0) / max(refused['answered'], 1):.1%} "
        f"RESOURCE_EXHAUSTED; {refused_cpu / noop_cpu:.2f}x the no-op's CPU per call (run "
        f"{len(rounds)}'s); by thread: "
        f"{refused_split}")

    results = {}
    for name, extra in (("imgw", []), ("imgw, no pooling", ["--reuse_connections=false"])):
        emulator = bench.emulator(0)
        gateway = bench.gateway(emulator, *lifted, *extra)
        result, cpu = closed_loop_ceiling(bench, gateway, args.ceiling_duration,
                                          args.concurrency)
        results[name] = (result, cpu)
        bench.stop_all()
    imgw_result, imgw_cpu = results["imgw"]
    np_result, np_cpu = results["imgw, no pooling"]
    add("ceiling", "imgw → imgw-emulator (HTTP/1.1), limits lifted", imgw_result, imgw_cpu,
        f"{imgw_cpu / noop_cpu:.1f}x the no-op's CPU per call")
    add("pooling", "imgw → imgw-emulator, limits lifted, --reuse_connections=false", np_result,
        np_cpu, f"{np_cpu / noop_cpu:.1f}x the no-op's CPU per call")
    return {
        "ratios": ratios,
        "merged_ratio": merged_cpu / noop_cpu,
        "refused_ratio": refused_cpu / noop_cpu,
        "pooling_gain": imgw_result["rate"] / np_result["rate"] if np_result["rate"] else 0.0,
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
    poll = bench.calls_poller(emulator)
    start = time.monotonic()
    # The emulator's calls every SAMPLE_S s from the start to 0.2 s before the end. A poll of a
    # far emulator takes a round trip: a tick already half a period past is skipped, so that the
    # polls never fall behind (the last one is always taken).
    end = duration - 0.2
    ticks = [i * SAMPLE_S for i in range(int(end / SAMPLE_S) + 1)] + [end]
    samples = []  # (seconds since the start, calls)
    rates = []  # (seconds since the start, calls in the second before)
    first = None
    for tick in ticks:
        if tick < end and time.monotonic() - start > tick + SAMPLE_S / 2:
            continue
        time.sleep(max(0.0, start + tick - time.monotonic()))
        when, calls, last_second = poll()
        samples.append((when - start, calls))
        rates.append((when - start, last_second))
        if first is None and tick >= warmup:
            first = samples[-1]
    last = samples[-1]
    if first is None or first is last:  # A run no longer than the warm-up.
        first = samples[0]
    results = [bench.loadgen_result(proc, duration + 60) for proc in procs]
    time.sleep(0.5)  # The last answers' way back from a far emulator.
    stats = bench.stats(emulator)
    metrics = [bench.metrics(gateway) for gateway in gateways]
    bench.stop_all()
    mean = (last[1] - first[1]) / (last[0] - first[0])

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
        "per_second": rates,
    }


def scenario_distance(bench, args, rows, targets, curves):
    """The budget with the upstream far away: round trips of 20 to 250 ms with +-10% jitter,
    over HTTP/1.1 and HTTP/2, one gateway and three sharing Redis. Appends the upstream calls
    per second over time to curves[replicas] (for plots.budget_over_time)."""
    for rtt in args.distances:
        for http2 in (False, True):
            for replicas in (1, 3):
                flags = [f"--latency_ms={rtt}", f"--jitter_ms={rtt // 10}",
                         f"--http2={'true' if http2 else 'false'}"]
                setup = (f"{rtt} ms ±{rtt // 10}, HTTP/{'2' if http2 else '1.1'}, "
                         f"{'one gateway' if replicas == 1 else 'three gateways sharing Redis'}")
                log(f"distance {setup} ...")
                b = scenario_budget(bench, args, replicas, flags)
                curves[replicas].append((f"{rtt} ms ±{rtt // 10}, HTTP/{'2' if http2 else '1.1'}",
                                         rtt, http2, b["per_second"]))
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


def scenario_latency(bench, args, server):
    """100 calls/s of distinct pairs, end to end, against `server`: "noop" (imgw-noop-server),
    "local" (imgw, its local budget) or "redis" (imgw, the budget in Redis)."""
    if server == "noop":
        gateway = bench.noop()
    else:
        emulator = bench.emulator(200)
        gateway = bench.gateway(emulator,
                                *(bench.redis_flags(bench.redis()) if server == "redis" else []))
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
    parser.add_argument("--ceiling_runs", type=int, default=3,
                        help="rounds of the no-op server, h2load and imgw side by side")
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
    parser.add_argument("--plots_dir", default=os.path.join(REPO, "docs", "perf"),
                        help="where the PNG plots go (created if missing; empty: no plots)")
    args = parser.parse_args()
    args.distances = [int(d) for d in args.distances.split(",") if d]
    if args.quick:
        args.ceiling_duration = args.merging_duration = args.latency_duration = 2
        args.ceiling_runs = 1
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
    if https_anchor.missing_tools():
        sys.exit(f"bench: {', '.join(https_anchor.missing_tools())} not found (Debian packages "
                 "nginx-light and nghttp2-client; .ci/deps installs them)")
    if shutil.which("redis-server") is None:
        sys.exit("bench: redis-server not found (Debian package redis-server; .ci/deps installs it)")
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    if args.plots_dir and plots.unavailable():
        log(f"no plots: {sys.executable} cannot import matplotlib ({plots.unavailable()}); "
            "run /usr/bin/python3, which has Debian's python3-matplotlib (bench/run does)")
        args.plots_dir = ""

    work = tempfile.mkdtemp(prefix="imgw-bench-")
    bench = Bench(os.path.abspath(args.bin), work)
    rows = []  # scenario, setup, rate, p50/p99, CPU per call, notes
    targets = []  # target, figure, met
    budget_curves = {1: [], 3: []}  # replicas: plots.budget_over_time's curves
    latency_curves = []  # plots.latency_cdf's curves
    queue_burst = None  # queue_scenarios.burst()'s figures
    try:
        if "ceiling" in only:
            log("ceiling and pooling ...")
            ceiling = scenario_ceiling(bench, rows, args)
            ratios = ceiling["ratios"]
            targets.append(["imgw's CPU per upstream call within 1.5x the no-op server's plus "
                            "h2load's, every run (ceiling)",
                            ", ".join(f"{r:.2f}x" for r in ratios),
                            yes(max(ratios) <= 1.5)])
            targets.append(["merged path within 1.2x the no-op server's CPU per call",
                            f"{ceiling['merged_ratio']:.2f}x", yes(ceiling["merged_ratio"] <= 1.2)])
            targets.append(["refusal path within 1.5x the no-op server's CPU per call",
                            f"{ceiling['refused_ratio']:.2f}x",
                            yes(ceiling["refused_ratio"] <= 1.5)])
        if "budget" in only:
            log("budget ...")
            for replicas, setup, share in (
                    (1, "one gateway, local budget", 0.98),
                    (3, "three gateways sharing Redis", 0.95)):
                b = scenario_budget(bench, args, replicas)
                budget_curves[replicas].append(("loopback, HTTP/1.1", None, False,
                                                b["per_second"]))
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
            scenario_distance(bench, args, rows, targets, budget_curves)
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
            noop = local = None
            for server, label in (("noop", "imgw-noop-server"), ("local", "imgw, local budget"),
                                  ("redis", "imgw, budget in Redis")):
                result = scenario_latency(bench, args, server)
                lat = result["latency_ms"]
                latency_curves.append((label, result["latency_cdf_ms"], lat["p50"], lat["p99"]))
                note = (f"p99.9 {lat['p999']:.2f} ms, max {lat['max']:.2f} ms; "
                        f"OK {ok_share(result):.1%}")
                if server == "noop":
                    rows.append(["latency", f"imgw-noop-server, 100 calls/s, distinct pairs, "
                                 f"{args.latency_duration} s", f"{result['rate']:,.0f} calls/s",
                                 f"{lat['p50']:.2f} / {lat['p99']:.2f} ms", "", note])
                    noop = lat
                    continue
                note += (f"; over the no-op server: p50 {lat['p50'] - noop['p50']:+.2f} ms, "
                         f"p99 {lat['p99'] - noop['p99']:+.2f} ms")
                if local is not None:
                    note += (f"; added by Redis: p50 {lat['p50'] - local['p50']:+.2f} ms, "
                             f"p99 {lat['p99'] - local['p99']:+.2f} ms")
                redis = server == "redis"
                rows.append(["latency", f"100 calls/s, distinct pairs, {args.latency_duration}"
                             f" s, {'budget in Redis' if redis else 'local budget'}",
                             f"{result['rate']:,.0f} calls/s",
                             f"{lat['p50']:.2f} / {lat['p99']:.2f} ms", "", note])
                bound = 2 if redis else 1
                targets.append([f"p99 <= {bound} ms at 100 calls/s "
                                f"({'Redis' if redis else 'local'} budget)",
                                f"{lat['p99']:.2f} ms", yes(lat["p99"] <= bound)])
                local = lat
        if "memory" in only:
            log("memory ...")
            m = scenario_memory(bench, args)
            rows.append(["memory", "gateway idle", "", "", "",
                         f"RSS {m['idle_rss'] / 1024:.1f} MiB "
                         f"(peak {m['idle_hwm'] / 1024:.1f} MiB)"])
            targets.append(["RSS idle <= 20 MB (the peak, at start-up, beside it)",
                            f"{m['idle_rss'] * 1024 / 1e6:.1f} MB (peak "
                            f"{m['idle_hwm'] * 1024 / 1e6:.1f} MB)",
                            yes(m["idle_rss"] * 1024 <= 20e6)])
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
            queue_burst = queue_scenarios.run(bench, args, rows, targets, log, yes)
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
    if args.plots_dir:
        draw_plots(args, budget_curves, latency_curves, queue_burst)


def draw_plots(args, budget_curves, latency_curves, queue_burst):
    """Writes the PNGs of the scenarios that ran to args.plots_dir."""
    os.makedirs(args.plots_dir, exist_ok=True)
    written = []

    def path(name):
        written.append(name)
        return os.path.join(args.plots_dir, name)

    offered = "5x the limit offered, distinct pairs"
    for replicas, name, who in ((1, "budget-one-gateway.png", "one gateway, local budget"),
                                (3, "budget-three-gateways.png",
                                 "three gateways sharing a budget in Redis")):
        if budget_curves[replicas]:
            plots.budget_over_time(path(name), f"Upstream calls/s at the emulator: {who}\n"
                                   f"({offered}; dashed: HTTP/2)", budget_curves[replicas], 200,
                                   window_s=1.0, sample_s=SAMPLE_S)
    if latency_curves:
        plots.latency_cdf(path("latency-cdf.png"), "End-to-end latency at 100 calls/s of "
                          f"distinct pairs ({args.latency_duration} s, on loopback)",
                          latency_curves)
    if queue_burst:
        plots.queue_burst(path("queue-burst.png"), "The queue: 1,000 enqueues/s for "
                          f"{args.queue_burst} s, drained at the upstream's limit of "
                          f"{queue_burst['limit']}/s",
                          [(t, p, o) for t, p, o, _ in queue_burst["series"]], args.queue_burst)
    log(f"plots in {args.plots_dir}: {', '.join(written) or 'none'}")


if __name__ == "__main__":
    main()
