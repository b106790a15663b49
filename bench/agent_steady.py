#!/usr/bin/env python3
"""The agent's steady state: CPU (% of one core) and resident memory over a window, at the default
10 s interval, with or without the load hostload.py makes (1,000 processes, 5,000 established
loopback connections = 10,000 sockets). Side by side in the same window, the naive alternative:
`ps -eo pid,ppid,user,lstart,args` and `ss -tuanp` run every interval.

Usage: cargo build --release && python3 bench/agent_steady.py --minutes 10 [--load]
The first 30 s after the agent comes online (its cold start) are left out of the window.
"""
import argparse, os, resource, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--interval", type=float, default=10, help="the agent's default")
    ap.add_argument("--agent-env", action="append", default=[], help="K=V for the agent, for experiments")
    a = ap.parse_args()
    window = a.minutes * 60
    if a.load:
        harness.load(1000, 5000, int(window + 120))
    c = harness.Collector()
    agent, host = c.start_agent("steady", **dict(kv.split("=", 1) for kv in a.agent_env))
    time.sleep(30)
    cpu0, _ = harness.usage(agent.pid)
    t0 = time.monotonic()
    peer0 = children_cpu()
    rss = []
    next_peer = t0
    while time.monotonic() - t0 < window:
        now = time.monotonic()
        if now >= next_peer:
            # The peers exit before we read their usage: RUSAGE_CHILDREN counts waited-for children.
            subprocess.run(["ps", "-eo", "pid,ppid,user,lstart,args"], stdout=subprocess.DEVNULL, check=True)
            subprocess.run(["ss", "-tuanp"], stdout=subprocess.DEVNULL, check=True)
            next_peer += a.interval
        _, r = harness.usage(agent.pid)
        rss.append(r)
        time.sleep(1)
    elapsed = time.monotonic() - t0
    cpu1, _ = harness.usage(agent.pid)
    peer = children_cpu() - peer0
    agent_pct = (cpu1 - cpu0) / elapsed * 100
    peer_pct = peer / elapsed * 100
    stats = c.cli("host", str(host)).get("agent_stats", {})
    print(f"window {elapsed:.0f} s, load: {'1000 procs + 10000 sockets' if a.load else 'none'}")
    print(f"agent CPU            {agent_pct:.3f} % of one core ({cpu1 - cpu0:.2f} s)")
    print(f"agent RSS            max {max(rss) / 2**20:.1f} MiB, median {statistics.median(rss) / 2**20:.1f} MiB")
    print(f"ps + ss -tuanp every {a.interval:g} s: {peer_pct:.3f} % of one core")
    print(f"ratio agent / peers  {agent_pct / peer_pct:.2f}x")
    print(f"agent's own report   exec_source={stats.get('exec_source')} socket_reader={stats.get('socket_reader')} "
          f"exec_events={stats.get('exec_events')} events_lost={stats.get('events_lost')}")


if __name__ == "__main__":
    main()
