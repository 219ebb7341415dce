"""The durable queue's rows of bench/run (scenario "queue"): EnqueueSetMsgRead's acknowledged
throughput with and without fsync, a burst absorbed and drained, a million entries pending
(RSS, bytes per entry on disk) and a restart on them (time to the first queued send).

Imported by bench/run.py, which owns the processes (class Bench)."""

import os
import socket
import time


def _queue_samples(bench, gateway):
    m = bench.metrics(gateway)
    return {
        "pending": m.get("imgw_queue_pending", 0),
        "oldest": m.get("imgw_queue_oldest_pending_seconds", 0),
        "applied": m.get("imgw_queue_applied_total", 0),
        "refused": sum(v for k, v in m.items() if k.startswith("imgw_queue_enqueue_refused_total")),
        "store_errors": m.get("imgw_queue_store_errors_total", 0),
    }


def enqueue_throughput(bench, args, fsync):
    """Closed loop, 64 in flight, distinct pairs: acknowledged enqueues per second."""
    emulator = bench.emulator(200)
    gateway = bench.gateway(emulator, f"--queue_fsync={'true' if fsync else 'false'}")
    cpu0 = gateway.cpu_seconds()
    result = bench.loadgen(gateway.target, args.queue_duration, "--mode=closed",
                           f"--concurrency={args.concurrency}", "--rpc=enqueue",
                           "--pairs=distinct", "--channels=8", "--deadline=10s")
    cpu = gateway.cpu_seconds() - cpu0
    samples = _queue_samples(bench, gateway)
    bench.stop_all()
    return result, cpu, samples


def burst(bench, args):
    """1,000 calls/s of distinct pairs enqueued for `queue_burst` s at the real 200/s limit:
    every call acknowledged, then the backlog drained; the backlog and the lag sampled every
    0.5 s (bench/run.py plots them)."""
    limit = 200
    emulator = bench.emulator(limit)
    gateway = bench.gateway(emulator)
    bench.reset(emulator)
    proc = bench.loadgen_start(gateway.target, f"--duration={args.queue_burst}s", "--mode=open",
                               "--rate=1000", "--rpc=enqueue", "--pairs=distinct",
                               "--deadline=5s", "--channels=4")
    start = time.monotonic()
    series = []  # (t, pending, oldest, applied), t in seconds since the start
    drain_from = None
    bound = start + args.queue_burst * 1000 / limit + 60
    result = None
    while time.monotonic() < bound:
        s = _queue_samples(bench, gateway)
        t = time.monotonic() - start
        series.append((t, s["pending"], s["oldest"], s["applied"]))
        if drain_from is None and t >= 3:
            drain_from = (t, s["applied"])
        if result is None and proc.popen.poll() is not None:
            result = bench.loadgen_result(proc, 10)
        if result is not None and s["pending"] == 0:
            break
        time.sleep(0.5)
    if result is None:
        result = bench.loadgen_result(proc, 60)
    # The steady drain: from 3 s in to the last sample with a backlog left.
    backlog = [p for p in series if p[1] > 0]
    last = backlog[-1] if backlog else series[-1]
    rate = (last[3] - drain_from[1]) / max(last[0] - drain_from[0], 1e-9) if drain_from else 0
    stats = bench.stats(emulator)
    samples = _queue_samples(bench, gateway)
    bench.stop_all()
    return {"result": result, "series": series, "drain_rate": rate, "limit": limit,
            "max_window": stats["max_calls_in_window"], "applied": stats["ok"],
            "drained_in": series[-1][0], "pending_left": samples["pending"]}


def million(bench, args):
    """`queue_fill` entries pending (the drain held to 2/s): RSS and bytes per entry; then a
    restart on the file: time from the start to the first queued send at the emulator."""
    emulator = bench.emulator(0)
    path = os.path.join(bench.work, "million.queue.db")
    gateway = bench.gateway(emulator, "--rate_limit=2", "--rate_burst=1", f"--queue_path={path}",
                            f"--queue_max_pending={args.queue_fill}")
    idle_rss = gateway.status_kib("VmRSS")
    proc = bench.loadgen_start(gateway.target, "--duration=600s", "--mode=closed",
                               "--concurrency=8", "--rpc=batch_enqueue", "--batch_size=500",
                               "--pairs=distinct", "--deadline=30s", "--channels=4")
    start = time.monotonic()
    pending = 0
    while time.monotonic() < start + 600:
        pending = _queue_samples(bench, gateway)["pending"]
        if pending >= args.queue_fill * 0.999 or proc.popen.poll() is not None:
            break
        time.sleep(0.5)
    fill_s = time.monotonic() - start
    proc.popen.kill()
    proc.popen.wait()
    time.sleep(2)
    rss = gateway.status_kib("VmRSS")
    hwm = gateway.status_kib("VmHWM")
    gateway.stop()
    disk = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal", "-shm")
               if os.path.exists(path + suffix))
    bench.reset(emulator)
    t0 = time.monotonic()
    restarted = bench.gateway(emulator, f"--queue_path={path}",
                              f"--queue_max_pending={args.queue_fill}")
    ready_s = time.monotonic() - t0
    first_send = None
    while time.monotonic() < t0 + 120:
        if bench.stats(emulator)["calls"] > 0:
            first_send = time.monotonic() - t0
            break
        time.sleep(0.01)
    restarted_rss = restarted.status_kib("VmRSS")
    bench.stop_all()
    return {"pending": pending, "fill_s": fill_s, "idle_rss": idle_rss, "rss": rss, "hwm": hwm,
            "disk": disk, "ready_s": ready_s, "first_send": first_send,
            "restarted_rss": restarted_rss}


def redis_command(redis, *args):
    """One command to the bench's Redis (RESP over a socket, after AUTH with its password): its
    reply, decoded, when it is a simple string, an integer or a bulk string."""
    host, port = redis.address.rsplit(":", 1)

    def encode(parts):
        out = f"*{len(parts)}\r\n".encode()
        for part in parts:
            b = str(part).encode()
            out += f"${len(b)}\r\n".encode() + b + b"\r\n"
        return out

    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(encode(["AUTH", "bench-password"]) + encode(list(args)))
        data = b""

        def need(n):
            nonlocal data
            while len(data) < n:
                chunk = conn.recv(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection")
                data += chunk

        def line(at):
            while b"\r\n" not in data[at:]:
                need(len(data) + 1)
            end = data.index(b"\r\n", at)
            return data[at:end].decode(), end + 2

        auth, at = line(0)
        if not auth.startswith("+OK"):
            raise RuntimeError(f"redis AUTH: {auth}")
        head, at = line(at)
        if head.startswith("$"):
            n = int(head[1:])
            need(at + n + 2)
            return data[at:at + n].decode(errors="replace")
        return head[1:]


def redis_used_memory(redis):
    info = redis_command(redis, "INFO", "memory")
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def redis_gateways(bench, emulator, redis, replicas, *flags):
    return [bench.gateway(emulator, *bench.redis_flags(redis), "--queue_backend=redis",
                          f"--redis_fallback_replicas={replicas}", "--redis_timeout=500ms",
                          *flags)
            for _ in range(replicas)]


def redis_enqueue_throughput(bench, args, replicas):
    """Closed loop, 64 in flight in all (split over the replicas, one loadgen each), distinct
    pairs, through the queue in Redis; then Redis' memory per pending entry."""
    redis = bench.redis()
    emulator = bench.emulator(200)
    memory0 = redis_used_memory(redis)
    gateways = redis_gateways(bench, emulator, redis, replicas)
    cpu0 = [g.cpu_seconds() for g in gateways]
    redis_cpu0 = redis.cpu_seconds()
    procs = [bench.loadgen_start(g.target, f"--duration={args.queue_duration}s", "--mode=closed",
                                 f"--concurrency={args.concurrency // replicas}", "--rpc=enqueue",
                                 "--pairs=distinct", f"--seed={i + 1}", "--channels=4",
                                 "--deadline=10s")
             for i, g in enumerate(gateways)]
    results = [bench.loadgen_result(p, args.queue_duration + 120) for p in procs]
    cpu = sum(g.cpu_seconds() - c for g, c in zip(gateways, cpu0))
    redis_cpu = redis.cpu_seconds() - redis_cpu0
    # The app's entries as Redis holds them (a replica's gauge is as of its last call).
    pending = int(redis_command(redis, "HLEN", f"imgw:{{{bench.sdkappid}}}:queue:entries"))
    memory = redis_used_memory(redis) - memory0
    bench.stop_all()
    ok = sum(r["codes"].get("OK", 0) for r in results)
    answered = sum(r["answered"] for r in results)
    p99 = max(r["latency_ms"]["p99"] for r in results)
    p50 = sorted(r["latency_ms"]["p50"] for r in results)[len(results) // 2]
    return {"ok": ok, "answered": answered, "rate": ok / args.queue_duration, "p50": p50,
            "p99": p99, "cpu": cpu, "redis_cpu": redis_cpu, "pending": pending,
            "bytes_per_entry": memory / max(pending, 1)}


def _claim_to_apply(metrics_list):
    """imgw_queue_claim_to_apply_seconds summed over gateways: (mean, p50, p99) in seconds, the
    quantiles interpolated within their bucket."""
    name = "imgw_queue_claim_to_apply_seconds"
    buckets, total, count = {}, 0.0, 0.0
    for m in metrics_list:
        total += m.get(name + "_sum", 0)
        count += m.get(name + "_count", 0)
        for k, v in m.items():
            if k.startswith(name + "_bucket{le=\""):
                le = k.split('le="')[1].rstrip('"}')
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0) + v
    def quantile(q):
        if count == 0:
            return 0.0
        want, lower, below = q * count, 0.0, 0.0
        for bound in sorted(buckets):
            if buckets[bound] >= want:
                if bound == float("inf"):
                    return lower
                share = (want - below) / max(buckets[bound] - below, 1e-9)
                return lower + (bound - lower) * share
            lower, below = bound, buckets[bound]
        return lower
    return (total / count if count else 0.0, quantile(0.5), quantile(0.99))


def redis_drain(bench, args, replicas=3):
    """`backlog` entries enqueued through one replica, drained by `replicas` sharing the budget
    (200/s) and the queue in Redis: the drain rate while more than a second's work is left."""
    limit = 200
    backlog = args.queue_redis_backlog
    redis = bench.redis()
    emulator = bench.emulator(limit)
    gateways = redis_gateways(bench, emulator, redis, replicas, f"--rate_limit={limit}")
    bench.reset(emulator)
    # Exactly `backlog` items: batches of 100 at a fixed rate for a whole number of seconds.
    seconds = max(1, backlog // 1000)
    result = bench.loadgen(gateways[0].target, seconds, "--mode=open",
                           f"--rate={backlog / (100 * seconds):g}", "--rpc=batch_enqueue",
                           "--batch_size=100", "--pairs=distinct", "--deadline=30s",
                           "--channels=2")
    backlog = result["codes"].get("OK", 0) * 100
    time.sleep(1)
    t0, calls0 = time.monotonic(), bench.stats(emulator)["calls"]
    t1, calls1 = t0, calls0
    while time.monotonic() < t0 + backlog / limit + 60:
        pending = _queue_samples(bench, gateways[1])["pending"]
        if pending <= limit:
            break
        t1, calls1 = time.monotonic(), bench.stats(emulator)["calls"]
        time.sleep(0.5)
    stats = bench.stats(emulator)
    per_replica = [_queue_samples(bench, g)["applied"] for g in gateways]
    claim = _claim_to_apply([bench.metrics(g) for g in gateways])
    bench.stop_all()
    return {"rate": (calls1 - calls0) / max(t1 - t0, 1e-9), "seconds": t1 - t0, "limit": limit,
            "backlog": backlog, "claim": claim,
            "max_window": stats["max_calls_in_window"], "per_replica": per_replica}


def run(bench, args, rows, targets, log, yes):
    """Runs the queue's scenarios and appends their rows and targets; returns burst()'s
    figures (its "series" of samples for the plot)."""
    for fsync in (True, False):
        log(f"queue: enqueue throughput, fsync {fsync} ...")
        result, cpu, samples = enqueue_throughput(bench, args, fsync)
        lat = result["latency_ms"]
        ok = result["codes"].get("OK", 0)
        rows.append(["queue", f"EnqueueSetMsgRead, {args.concurrency} in flight, distinct pairs, "
                     f"--queue_fsync={'true' if fsync else 'false'}, {args.queue_duration} s",
                     f"{result['rate']:,.0f} calls/s", f"{lat['p50']:.2f} / {lat['p99']:.2f} ms",
                     f"{cpu / max(result['answered'], 1) * 1e6:.0f} µs",
                     f"{ok:,} acknowledged of {result['answered']:,}; "
                     f"{samples['store_errors']:.0f} store errors"])
        if fsync:
            targets.append(["enqueue >= 20,000 calls/s acknowledged with fsync on 2 cores",
                            f"{result['rate']:,.0f} calls/s", yes(result["rate"] >= 20000)])
    log("queue: burst ...")
    b = burst(bench, args)
    r = b["result"]
    lag = ", ".join(f"{t:.0f}s: {p:,.0f} pending, oldest {o:.0f}s"
                    for t, p, o, _ in b["series"][::max(1, len(b["series"]) // 6)])
    rows.append(["queue", f"burst: 1,000 enqueues/s of distinct pairs for {args.queue_burst} s "
                 f"at the real 200/s", f"{b['drain_rate']:.1f} drained/s", "", "",
                 f"{r['codes'].get('OK', 0):,} acknowledged, "
                 f"{r['answered'] - r['codes'].get('OK', 0):,} refused; drained in "
                 f"{b['drained_in']:.0f} s, max {b['max_window']} in a sliding second; lag: {lag}"])
    targets.append(["burst: every enqueue acknowledged, none refused",
                    f"{r['codes'].get('OK', 0):,} of {r['answered']:,}",
                    yes(r["codes"].get("OK", 0) == r["answered"] and r["answered"] > 0)])
    targets.append(["burst drained at >= 98% of the limit", f"{b['drain_rate'] / b['limit']:.1%}",
                    yes(b["drain_rate"] >= 0.98 * b["limit"])])
    targets.append(["burst: no sliding second over the limit", f"max {b['max_window']}",
                    yes(b["max_window"] <= b["limit"])])
    log("queue: a million pending ...")
    m = million(bench, args)
    per_entry = m["disk"] / max(m["pending"], 1)
    rows.append(["queue", f"{m['pending']:,.0f} entries pending (filled in {m['fill_s']:.0f} s)",
                 "", "", "", f"RSS {m['rss'] / 1024:.1f} MiB (peak {m['hwm'] / 1024:.1f} MiB, "
                 f"idle {m['idle_rss'] / 1024:.1f}); {m['disk'] / 1e6:.0f} MB on disk, "
                 f"{per_entry:.0f} bytes per entry"])
    first = f"{m['first_send']:.2f} s" if m["first_send"] is not None else "none in 120 s"
    rows.append(["queue", f"restart on {m['pending']:,.0f} pending", "", "", "",
                 f"ready in {m['ready_s']:.2f} s, first queued send {first} after the start "
                 f"(--startup_hold=1s included); RSS {m['restarted_rss'] / 1024:.1f} MiB"])
    targets.append([f"RSS <= 64 MB with {m['pending']:,.0f} pending",
                    f"{m['hwm'] * 1024 / 1e6:.1f} MB", yes(m["hwm"] * 1024 <= 64e6)])
    for replicas in (1, 3):
        log(f"queue: enqueue throughput through Redis, {replicas} replica(s) ...")
        e = redis_enqueue_throughput(bench, args, replicas)
        rows.append(["queue", f"EnqueueSetMsgRead through the queue in Redis, {replicas} "
                     f"replica(s), {args.concurrency} in flight in all, distinct pairs"
                     f"{' (one loadgen per replica, drawing the same names: they merge)' if replicas > 1 else ''}, "
                     f"{args.queue_duration} s", f"{e['rate']:,.0f} calls/s",
                     f"{e['p50']:.2f} / {e['p99']:.2f} ms",
                     f"{e['cpu'] / max(e['answered'], 1) * 1e6:.0f} µs",
                     f"{e['ok']:,} acknowledged of {e['answered']:,}; Redis "
                     f"{e['redis_cpu'] / max(e['answered'], 1) * 1e6:.0f} µs of CPU per call; "
                     f"{e['pending']:,.0f} pending after, {e['bytes_per_entry']:.0f} bytes of "
                     f"Redis memory per pending entry"])
    log("queue: three replicas draining one backlog in Redis ...")
    d = redis_drain(bench, args)
    rows.append(["queue", f"three replicas draining {d['backlog']:,} entries in Redis against one "
                 "200/s budget in Redis", f"{d['rate']:.1f} drained/s", "", "",
                 f"{d['rate'] / d['limit']:.1%} of the limit over {d['seconds']:.0f} s, max "
                 f"{d['max_window']} in a sliding second; applied by each replica: "
                 + ", ".join(f"{a:,.0f}" for a in d["per_replica"])
                 + f"; from claim to apply: mean {d['claim'][0] * 1000:.0f} ms, p50 "
                 f"{d['claim'][1] * 1000:.0f} ms, p99 {d['claim'][2] * 1000:.0f} ms"])
    targets.append(["Redis queue: three replicas drain at >= 97% of the limit",
                    f"{d['rate'] / d['limit']:.1%}", yes(d["rate"] >= 0.97 * d["limit"])])
    targets.append(["Redis queue: no sliding second over the limit", f"max {d['max_window']}",
                    yes(d["max_window"] <= d["limit"])])
    return b
