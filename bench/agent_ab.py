#!/usr/bin/env python3
"""Two agent binaries side by side: each its own agent (own state directory), one collector, the
same machine at the same time, nothing else started by the script. After 30 s, --rounds windows
of --seconds each; per window, each agent's CPU as a share of one core, read two ways:
`schedstat` (the exact run time of every thread, summed) and `/proc/PID/stat` (user + system
time, charged a tick at a time, as agent_steady.py reads it).

Usage: python3 bench/agent_ab.py OLD_AGENT NEW_AGENT [--rounds 5] [--seconds 120] [--warmup 30]
       [--old-env K=V]... [--new-env K=V]... [--load]
(OLD_AGENT: e.g. a release `hostwatch-agent` built from an earlier commit in another worktree. The
same binary twice with different --old-env/--new-env compares a setting, e.g.
`--new-env HOSTWATCH_PROBES=false`; --load runs hostload.py's 1,000 processes and 5,000
connections under both for the whole run.)
"""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

TICKS = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """(schedstat seconds, /proc/PID/stat seconds) used so far by every thread of `pid`."""
    sched = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            sched += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass  # a thread that ended between the listing and the read
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sched / 1e9, (int(fields[11]) + int(fields[12])) / TICKS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--warmup", type=float, default=30, help="seconds after both start, left out")
    ap.add_argument("--old-env", action="append", default=[], help="K=V for the old agent")
    ap.add_argument("--new-env", action="append", default=[], help="K=V for the new agent")
    ap.add_argument("--load", action="store_true", help="hostload.py: 1,000 processes, 5,000 connections")
    a = ap.parse_args()
    load = harness.load(1000, 5000, int(a.warmup + a.rounds * a.seconds + 120)) if a.load else None
    c = harness.Collector()
    real = harness.binary
    pids = {}
    for tag, path, env in (("old", a.old, a.old_env), ("new", a.new, a.new_env)):
        harness.binary = lambda name, target=None, path=path: path if name == "hostwatch-agent" else real(name, target)
        agent, _ = c.start_agent(tag, **dict(kv.split("=", 1) for kv in env))
        pids[tag] = agent.pid
    harness.binary = real
    print(f"old: {a.old} {' '.join(a.old_env)}; new: {a.new} {' '.join(a.new_env)}; "
          f"{'under hostload.py 1,000/5,000' if load else 'idle'}; warm-up {a.warmup:g} s", flush=True)
    time.sleep(a.warmup)
    rows = {k: [] for k in pids}
    for r in range(a.rounds):
        before = {k: cpu(p) for k, p in pids.items()}
        t0 = time.time()
        time.sleep(a.seconds)
        after = {k: cpu(p) for k, p in pids.items()}
        elapsed = time.time() - t0
        parts = []
        for k in pids:
            sched = (after[k][0] - before[k][0]) / elapsed * 100
            stat = (after[k][1] - before[k][1]) / elapsed * 100
            rows[k].append((sched, stat))
            parts.append(f"{k}: schedstat {sched:.4f}%, stat {stat:.4f}%")
        print(f"round {r + 1}: " + "; ".join(parts), flush=True)
    for k, v in rows.items():
        sched = sorted(x[0] for x in v)
        stat = sorted(x[1] for x in v)
        print(f"{k}: schedstat median {sched[len(sched) // 2]:.4f}% ({sched[0]:.4f}-{sched[-1]:.4f}); "
              f"stat median {stat[len(stat) // 2]:.4f}% ({stat[0]:.4f}-{stat[-1]:.4f})")


if __name__ == "__main__":
    main()
