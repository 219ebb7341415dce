"""The pictures of bench/run: PNG charts of what bench/run.py measured, drawn with matplotlib
(Debian's python3-matplotlib; the Agg backend, so no display is needed).

Each function takes plain data (lists of numbers and labels) and writes one PNG of 8x4.5 inches
at 100 dpi; it raises ValueError rather than draw a chart without data. Imported by
bench/run.py, which checks unavailable() first and draws nothing, saying so once, when
matplotlib is missing."""

try:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib import ticker
    _MISSING = None
except ImportError as e:  # Keeps bench/run.py working without it.
    pyplot = None
    _MISSING = str(e)

SIZE = (8, 4.5)
DPI = 100
# One colour per round trip of the distance rows (the loopback line is black).
COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]


def unavailable():
    """None if the plots can be drawn, else why not (matplotlib is not importable)."""
    return _MISSING


def _require(data, what):
    if not data:
        raise ValueError(f"nothing to plot: no {what}")


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot.close(fig)


def budget_over_time(path, title, curves, limit, window_s=1.0, sample_s=0.25):
    """Upstream calls per second at the emulator over time, one line per setup, against the
    limit. `curves`: [(label, rtt_ms or None for loopback, http2, [(t_s, calls_per_s), ...])]."""
    _require([c for c in curves if c[3]], "samples of upstream calls")
    fig, ax = pyplot.subplots(figsize=SIZE)
    rtts = sorted({rtt for _, rtt, _, _ in curves if rtt is not None})
    top = limit
    for label, rtt, http2, points in curves:
        if not points:
            continue
        colour = "black" if rtt is None else COLOURS[rtts.index(rtt) % len(COLOURS)]
        ax.plot([t for t, _ in points], [r for _, r in points], label=label, color=colour,
                linestyle="--" if http2 else "-", linewidth=1.2)
        top = max(top, max(r for _, r in points))
    ax.axhline(limit, color="red", linestyle=":", linewidth=1.5, label=f"limit: {limit}/s")
    ax.set_ylim(0, top * 1.15)
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel(f"upstream calls in the last {window_s:g} s\n(the emulator's count, every "
                  f"{sample_s:g} s)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", ncol=2 if len(curves) > 4 else 1)
    _save(fig, path)


def latency_cdf(path, title, curves):
    """End-to-end latency CDFs on one chart, x in ms on a log scale.
    `curves`: [(label, [[ms, fraction], ...], p50_ms, p99_ms)]."""
    _require([c for c in curves if c[1]], "latency CDF")
    fig, ax = pyplot.subplots(figsize=SIZE)
    for i, (label, cdf, p50, p99) in enumerate(curves):
        if not cdf:
            continue
        colour = COLOURS[i % len(COLOURS)]
        ax.plot([ms for ms, _ in cdf], [f for _, f in cdf], color=colour, linewidth=1.5,
                label=f"{label} (p50 {p50:.2f} ms, p99 {p99:.2f} ms)")
        ax.plot([p50, p99], [0.5, 0.99], linestyle="none", marker="o", color=colour,
                markersize=5)
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(q, color="grey", linestyle=":", linewidth=1)
        ax.annotate(name, xy=(0, q), xycoords=("axes fraction", "data"), xytext=(3, -11),
                    textcoords="offset points", color="grey", fontsize="small")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.set_xlabel("end-to-end latency, ms (log scale)")
    ax.set_ylabel("share of the calls answered within")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def queue_burst(path, title, series, burst_s):
    """The queue's backlog and lag while a burst is absorbed and drained, two panels sharing the
    time axis. `series`: [(t_s, pending entries, age of the oldest pending entry in s)]."""
    _require(series, "samples of the queue")
    fig, (top, bottom) = pyplot.subplots(2, 1, figsize=SIZE, sharex=True)
    times = [t for t, _, _ in series]
    top.plot(times, [p for _, p, _ in series], color="tab:blue", linewidth=1.5)
    top.set_ylabel("backlog\n(entries pending)")
    top.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    bottom.plot(times, [o for _, _, o in series], color="tab:orange", linewidth=1.5)
    bottom.set_ylabel("lag (s): age of the\noldest pending entry")
    bottom.set_xlabel("seconds since the burst started")
    for ax in (top, bottom):
        ax.axvline(burst_s, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    top.annotate("enqueues stop", xy=(burst_s, 0), xycoords=("data", "axes fraction"),
                 xytext=(4, 4), textcoords="offset points", color="grey", fontsize="small")
    bottom.set_xlim(left=0)
    top.set_title(title)
    _save(fig, path)
