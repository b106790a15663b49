#!/usr/bin/env python3
"""Soak: a release collector (SQLite) and a real agent on this machine for --minutes (default 30)
under steady churn, with --agents (default 1,000) simulated agents (hostwatch-load) reporting to
the same collector the whole time. Every --every seconds (default 5) it samples, for the
collector and the agent: resident memory, CPU (% of a core since the last sample) and open file
descriptors; at the end it prints the figures, whether memory grew, and writes the samples (CSV)
and a plot (PNG, python3-matplotlib) to --out.

The churn, all on loopback and in a temporary directory the script makes:
  - --execs programs a second (default 10), copies of /bin/sleep under three fixed names living
    50 ms (each run judged; the same names, so findings count occurrences rather than pile up);
  - one TCP connection a second to a listener the script holds, open for 20 ms;
  - a new listener every 30 s, closed 10 s later, on a port of its own each time;
  - a file written, renamed and removed every 10 s in a directory the agent watches.
Memory "grew" if the least-squares slope of RSS over the second half of the run, projected over
an hour, exceeds 5 MiB (the first half holds the start-up and the store's warm-up). The
collector's SQLite page caches fill as its store grows, up to a bound (16 MiB per connection):
its RSS is judged as that store's memory (from its /metrics, which must stay within the bound)
and the rest (whose slope must stay under 5 MiB/h).

Usage: cargo build --release --locked -p hostwatch-server -p hostwatch-agent -p hostwatch-e2e &&
       python3 bench/soak.py [--minutes 30] [--agents 1000] [--out soak]
"""
import argparse, csv, json, math, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def churn(stop, work, execs_per_sec, counts):
    """The steady churn above, until `stop` is set."""
    progs = []
    for name in ("soak-task-a", "soak-task-b", "soak-task-c"):
        p = os.path.join(work, name)
        shutil.copy("/bin/sleep", p)
        progs.append(p)
    watched = os.path.join(work, "watched")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    children, extra = [], None
    t0 = time.monotonic()
    tick = 0
    while not stop.is_set():
        # A tick of 1/execs_per_sec seconds: one program; every second also a connection; every
        # 10 s a file; a listener at 30 s, closed at 40 s.
        children.append(subprocess.Popen([progs[tick % 3], "0.05"]))
        counts["execs"] += 1
        children = [c for c in children if c.poll() is None]
        if tick % execs_per_sec == 0:
            second = tick // execs_per_sec
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    time.sleep(0.02)
                counts["connections"] += 1
            except OSError:
                counts["connection_errors"] += 1
            if second % 10 == 0:
                f = os.path.join(watched, "app.conf")
                with open(f + ".tmp", "w") as out:
                    out.write(f"generation {second}\n")
                os.replace(f + ".tmp", f)
                if second % 20 == 0:
                    os.remove(f)
                counts["file_changes"] += 1
            if second % 40 == 30:
                extra = socket.socket()
                extra.bind(("127.0.0.1", 0))
                extra.listen(1)
                counts["listeners"] += 1
            elif second % 40 == 0 and extra is not None:
                extra.close()
                extra = None
        tick += 1
        next_at = t0 + tick / execs_per_sec
        time.sleep(max(0.0, next_at - time.monotonic()))
    for c in children:
        c.wait()
    server.close()


def slope_mib_per_hour(samples, key):
    """Least-squares slope of `key` (bytes) over the second half of the samples, in MiB an hour."""
    half = samples[len(samples) // 2:]
    xs = [s["t"] for s in half]
    ys = [s[key] / 2**20 for s in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600


def store_memory(c):
    """The collector's own figure for what its SQLite store holds (page caches and statements of
    all its connections), from /metrics; bounded by cache_size per connection."""
    req = urllib.request.Request(c.url + "/metrics", headers={"Authorization": f"Bearer {c.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("hostwatch_store_memory_bytes "):
                return int(float(line.split()[1]))
    sys.exit("the collector's /metrics has no hostwatch_store_memory_bytes")


# What SQLite may hold at most: 16 MiB of page cache for each of the writer's and the four
# readers' connections (server/src/store/sqlite.rs), and room for their schemas and statements.
STORE_BOUND = 5 * 16 * 2**20 + 16 * 2**20


def by_period(samples, minutes):
    """Medians of each `minutes` of the run: a trend a slope could hide (or a step it exaggerates).
    Each sample carries `rest_rss` (the collector less its store) by then."""
    periods = {}
    for s in samples:
        periods.setdefault(int(s["t"] / 60 // minutes), []).append(s)
    # (heading, key, divisor, format)
    columns = [("collector CPU %", "collector_cpu", 1, "6.1f"), ("collector RSS MiB", "collector_rss", 2**20, "7.1f"),
               ("its store MiB", "collector_store", 2**20, "6.1f"), ("the rest MiB", "rest_rss", 2**20, "6.1f"),
               ("agent RSS MiB", "agent_rss", 2**20, "6.2f"), ("agent CPU %", "agent_cpu", 1, "5.2f"),
               ("collector fds", "collector_fds", 1, "5.0f")]
    print(f"per {minutes:g} minutes (medians): minute, " + ", ".join(c[0] for c in columns))
    for k, ss in sorted(periods.items()):
        print(f"  {k * minutes:5g} " + " ".join(format(statistics.median(s[key] for s in ss) / div, fmt)
                                              for _, key, div, fmt in columns))


def plot(samples, path, a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    t = [s["t"] / 60 for s in samples]
    for who, colour in (("collector", "#c55a11"), ("agent", "#4472c4")):
        axes[0].plot(t, [s[f"{who}_rss"] / 2**20 for s in samples], label=who, color=colour)
        if who == "collector":
            axes[0].plot(t, [s["collector_store"] / 2**20 for s in samples], label="collector: its SQLite store",
                         color=colour, linestyle=":")
            axes[0].plot(t, [(s["collector_rss"] - s["collector_store"]) / 2**20 for s in samples],
                         label="collector less its store", color=colour, linestyle="--")
        axes[1].plot(t, [s[f"{who}_cpu"] for s in samples], label=who, color=colour, linewidth=0.8)
        axes[2].plot(t, [s[f"{who}_fds"] for s in samples], label=who, color=colour)
    axes[0].set_ylabel("RSS, MiB")
    axes[1].set_ylabel(f"CPU, % of a core\n(per {a.every:g} s)")
    axes[2].set_ylabel("open fds")
    axes[2].set_xlabel("minutes")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"soak: collector + agent, {a.agents} simulated agents, {a.execs} execs/s churn, "
                      f"{a.minutes:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--execs", type=int, default=10, help="programs started a second")
    ap.add_argument("--every", type=float, default=5, help="seconds between samples")
    ap.add_argument("--out", default="soak")
    ap.add_argument("--period", type=float, help="minutes per line of the medians table (default a ninth of the run)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    duration = a.minutes * 60
    work = tempfile.mkdtemp(prefix="hw-soak-")
    harness._made.append(work)
    os.makedirs(os.path.join(work, "watched"))
    extra = (f"[limits]\nmax_connections = {max(4096, 2 * a.agents)}\n"
             f"enrollments_per_address_per_minute = 100000\n")
    # HW_COLLECTOR_WRAP runs the collector under a profiler, e.g. "heaptrack -o /tmp/collector"
    # with a collector built without mimalloc (see server/Cargo.toml), so that it sees the heap.
    c = harness.Collector(extra, wrap=os.environ.get("HW_COLLECTOR_WRAP", "").split())
    agent, host = c.start_agent("soak", HOSTWATCH_FILES_PATHS=os.path.join(work, "watched"))
    gen = harness.start([harness.binary("hostwatch-load"), "--server", c.url, "--secret-file", c.secret_file,
                         "--agents", str(a.agents), "--duration", str(int(duration)), "--warmup", str(int(min(90, duration / 3))),
                         "--boot-over", str(int(min(60, duration / 4))), "--sources", str(max(1, math.ceil(a.agents / 400))),
                         "--processes", "300", "--json"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    counts = {"execs": 0, "connections": 0, "connection_errors": 0, "file_changes": 0, "listeners": 0}
    churner = threading.Thread(target=churn, args=(stop, work, a.execs, counts), daemon=True)
    churner.start()

    samples = []
    t0 = time.monotonic()
    last = {"collector": harness.usage(c.pid)[0], "agent": harness.usage(agent.pid)[0]}
    last_t = t0
    with open(os.path.join(a.out, "samples.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "collector_rss", "collector_cpu", "collector_fds", "collector_store", "agent_rss", "agent_cpu",
                    "agent_fds"])
        while time.monotonic() - t0 < duration:
            time.sleep(a.every)
            now = time.monotonic()
            s = {"t": now - t0}
            for who, pid in (("collector", c.pid), ("agent", agent.pid)):
                if (c.proc if who == "collector" else agent).poll() is not None:
                    sys.exit(f"the {who} exited during the soak")
                cpu, rss = harness.usage(pid)
                s[f"{who}_rss"] = rss
                s[f"{who}_cpu"] = (cpu - last[who]) / (now - last_t) * 100
                s[f"{who}_fds"] = fds(pid)
                last[who] = cpu
            last_t = now
            s["collector_store"] = store_memory(c)
            samples.append(s)
            w.writerow([round(s["t"], 1), s["collector_rss"], round(s["collector_cpu"], 2), s["collector_fds"],
                        s["collector_store"], s["agent_rss"], round(s["agent_cpu"], 2), s["agent_fds"]])
            f.flush()
    stop.set()
    churner.join(timeout=30)
    out, err = gen.communicate(timeout=300)
    if not out.strip():
        sys.exit(f"hostwatch-load printed nothing: {err[-2000:]}")
    fleet = json.loads(out)
    stats = c.cli("host", str(host)).get("agent_stats", {})
    lost = c.cli("findings", "--host", str(host), "--kind", "data_lost")

    print(f"soak {a.minutes:g} min: {a.agents} simulated agents, churn {counts}")
    print(f"simulated fleet: accepted {fleet.get('accepted_per_sec')}/s, p50 {fleet.get('p50_ms')} ms, "
          f"p99 {fleet.get('p99_ms')} ms, not accepted {fleet.get('not_accepted')} {fleet.get('outcomes')}, "
          f"transport errors {fleet.get('transport_errors')}")
    print(f"the real agent: exec_events={stats.get('exec_events')} events_lost={stats.get('events_lost')}, "
          f"data_lost findings: {len(lost)}")
    verdicts = []
    for who in ("collector", "agent"):
        rss = [s[f"{who}_rss"] / 2**20 for s in samples]
        cpu = [s[f"{who}_cpu"] for s in samples]
        fd = [s[f"{who}_fds"] for s in samples]
        tenth = max(1, len(samples) // 10)
        early, late = statistics.median(rss[tenth:2 * tenth]), statistics.median(rss[-tenth:])
        slope = slope_mib_per_hour(samples, f"{who}_rss")
        grew = slope > 5
        verdicts.append(grew)
        print(f"{who}: RSS median {statistics.median(rss):.1f} MiB (min {min(rss):.1f}, max {max(rss):.1f}); "
              f"second tenth {early:.1f} MiB, last tenth {late:.1f} MiB; slope over the second half "
              f"{slope:+.2f} MiB/h: {'GREW' if grew else 'flat'}; CPU median {statistics.median(cpu):.2f}% "
              f"(p99 {statistics.quantiles(cpu, n=100)[98]:.2f}%); fds {min(fd)}-{max(fd)}, last {fd[-1]}")
    # The collector's store caches fill as the store grows, up to their bound: its memory is
    # judged as the store's (within the bound) and the rest (which must not grow).
    for s in samples:
        s["rest_rss"] = s["collector_rss"] - s["collector_store"]
    store = [s["collector_store"] / 2**20 for s in samples]
    rest = [s["rest_rss"] / 2**20 for s in samples]
    tenth = max(1, len(samples) // 10)
    rest_slope = slope_mib_per_hour(samples, "rest_rss")
    over = max(s["collector_store"] for s in samples) > STORE_BOUND
    verdicts = [rest_slope > 5 or over, verdicts[1]]
    print(f"collector's SQLite store: {store[tenth]:.1f} MiB at the second tenth, {store[-1]:.1f} MiB at the end, "
          f"max {max(store):.1f} MiB (bound {STORE_BOUND / 2**20:.0f} MiB): {'OVER' if over else 'within'}")
    print(f"collector less its store: second tenth {statistics.median(rest[tenth:2 * tenth]):.1f} MiB, last tenth "
          f"{statistics.median(rest[-tenth:]):.1f} MiB; slope over the second half {rest_slope:+.2f} MiB/h: "
          f"{'GREW' if rest_slope > 5 else 'flat'}")
    by_period(samples, a.period or max(1, round(a.minutes / 9)))
    plot(samples, os.path.join(a.out, "soak.png"), a)
    print(f"samples: {os.path.join(a.out, 'samples.csv')}; plot: {os.path.join(a.out, 'soak.png')}")
    sys.exit(1 if any(verdicts) else 0)


if __name__ == "__main__":
    main()
