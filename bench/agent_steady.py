#!/usr/bin/env python3
"""The agent's steady state: CPU (% of one core) and resident memory over a window, at the default
10 s interval, with or without the load hostload.py makes (1,000 processes, 5,000 established
loopback connections = 10,000 sockets). Side by side in the same window, the naive alternative:
`ps -eo pid,ppid,user,lstart,args` and `ss -tuanp` run every interval, as whole processes.

Usage: cargo build --release && python3 bench/agent_steady.py --minutes 10 [--load] [--runs 3]
       [--plot cpu.png]
Each run starts its own collector, agent and load; the first 30 s after the agent comes online
(its cold start) are left out of the window. Every run is printed, then the median, min and max
over the runs; --plot draws each run's agent CPU per 10 s and RSS over the window
(python3-matplotlib).
"""
import argparse, os, resource, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(a, window):
    load = harness.load(1000, 5000, int(window + 120)) if a.load else None
    c = harness.Collector()
    agent, host = c.start_agent("steady", **dict(kv.split("=", 1) for kv in a.agent_env))
    time.sleep(30)
    cpu0, _ = harness.usage(agent.pid)
    t0 = time.monotonic()
    peer0 = children_cpu()
    rss, series = [], []  # series: (seconds into the window, agent CPU % over the last 10 s, RSS MiB)
    next_peer = t0
    last_t, last_cpu = t0, cpu0
    while time.monotonic() - t0 < window:
        now = time.monotonic()
        if now >= next_peer:
            # The peers exit before we read their usage: RUSAGE_CHILDREN counts waited-for children.
            subprocess.run(["ps", "-eo", "pid,ppid,user,lstart,args"], stdout=subprocess.DEVNULL, check=True)
            subprocess.run(["ss", "-tuanp"], stdout=subprocess.DEVNULL, check=True)
            next_peer += a.interval
        cpu, r = harness.usage(agent.pid)
        rss.append(r)
        now = time.monotonic()
        if now - last_t >= 10:
            series.append((now - t0, (cpu - last_cpu) / (now - last_t) * 100, r / 2**20))
            last_t, last_cpu = now, cpu
        time.sleep(1)
    elapsed = time.monotonic() - t0
    cpu1, _ = harness.usage(agent.pid)
    peer = children_cpu() - peer0
    stats = c.cli("host", str(host)).get("agent_stats", {})
    for p in (agent, c.proc, load):
        if p is not None:
            harness.stop(p)
    return {
        "elapsed": elapsed,
        "agent": (cpu1 - cpu0) / elapsed * 100,
        "agent_s": cpu1 - cpu0,
        "peers": peer / elapsed * 100,
        "rss_max": max(rss) / 2**20,
        "rss_median": statistics.median(rss) / 2**20,
        "series": series,
        "stats": stats,
    }


def plot(runs, a, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (cpu, mem) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for i, r in enumerate(runs):
        t = [s[0] / 60 for s in r["series"]]
        cpu.plot(t, [s[1] for s in r["series"]], label=f"run {i + 1}: {r['agent']:.3f}% over the window")
        mem.plot(t, [s[2] for s in r["series"]], label=f"run {i + 1}")
    cpu.set_ylabel("agent CPU, % of a core\n(per 10 s)")
    mem.set_ylabel("agent RSS, MiB")
    mem.set_xlabel("minutes into the window")
    cpu.legend(fontsize=8)
    load = "1,000 processes + 10,000 sockets" if a.load else "no load"
    cpu.set_title(f"agent steady state, {load}, {a.interval:g} s interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--interval", type=float, default=10, help="the agent's default")
    ap.add_argument("--agent-env", action="append", default=[], help="K=V for the agent, for experiments")
    ap.add_argument("--plot", help="write each run's CPU and RSS over time to this PNG")
    a = ap.parse_args()
    window = a.minutes * 60
    load = "1000 procs + 10000 sockets" if a.load else "none"
    runs = []
    for i in range(a.runs):
        r = one_run(a, window)
        runs.append(r)
        s = r["stats"]
        print(f"run {i + 1}: window {r['elapsed']:.0f} s, load: {load}; agent CPU {r['agent']:.3f}% of one core "
              f"({r['agent_s']:.2f} s), RSS max {r['rss_max']:.1f} MiB median {r['rss_median']:.1f} MiB; "
              f"ps + ss -tuanp every {a.interval:g} s: {r['peers']:.3f}%; ratio {r['agent'] / r['peers']:.2f}x; "
              f"exec_source={s.get('exec_source')} exec_events={s.get('exec_events')} "
              f"events_lost={s.get('events_lost')}", flush=True)

    def line(what, values, unit, fmt=".3f"):
        med, lo, hi = statistics.median(values), min(values), max(values)
        print(f"{what:28} median {med:{fmt}}{unit} (min {lo:{fmt}}, max {hi:{fmt}}) over {len(values)} runs")

    print()
    line("agent CPU, % of a core", [r["agent"] for r in runs], "%")
    line("agent RSS max, MiB", [r["rss_max"] for r in runs], " MiB", ".1f")
    line("peers, % of a core", [r["peers"] for r in runs], "%")
    line("ratio agent / peers", [r["agent"] / r["peers"] for r in runs], "x", ".2f")
    if a.plot:
        plot(runs, a, a.plot)


if __name__ == "__main__":
    main()
