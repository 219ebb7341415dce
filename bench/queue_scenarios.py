"""The durable queue's rows of bench/run (scenario "queue"): EnqueueSetMsgRead's acknowledged
throughput with and without fsync, a burst absorbed and drained, a million entries pending
(RSS, bytes per entry on disk) and a restart on them (time to the first queued send).

Imported by bench/run.py, which owns the processes (class Bench)."""

import os
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
    every call acknowledged, then the backlog drained; the lag sampled every second."""
    limit = 200
    emulator = bench.emulator(limit)
    gateway = bench.gateway(emulator)
    bench.reset(emulator)
    proc = bench.loadgen_start(gateway.target, f"--duration={args.queue_burst}s", "--mode=open",
                               "--rate=1000", "--rpc=enqueue", "--pairs=distinct",
                               "--deadline=5s", "--channels=4")
    start = time.monotonic()
    series = []  # (t, pending, oldest, applied)
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
        time.sleep(1)
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


def run(bench, args, rows, targets, log, yes):
    """Runs the queue's scenarios and appends their rows and targets."""
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
