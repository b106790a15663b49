#!/usr/bin/env python3
"""Exec capture: a burst of 10,000 `/bin/true` (spawned as fast as this machine allows, each
reaped at once) with the agent running; how many reach the collector's history as exec events,
and how many of those with exe and command line read before the process exited.

Usage: cargo build --release && python3 bench/exec_burst.py [--runs 3] [--count 10000]
"""
import argparse, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def burst(count):
    pids, live = [], 0
    t0 = time.monotonic()
    for _ in range(count):
        pids.append(os.posix_spawn("/bin/true", ["/bin/true"], {}))
        live += 1
        # Reap what has ended, so that processes do not linger as zombies.
        while live:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            live -= 1
    while live:
        os.waitpid(-1, 0)
        live -= 1
    return pids, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=10000)
    a = ap.parse_args()
    c = harness.Collector()
    agent, host = c.start_agent("execs")
    true_exe = os.path.realpath("/bin/true")
    recorded_share, read_share = [], []
    for run in range(a.runs):
        pids, took = burst(a.count)
        wanted = set(pids)
        deadline = time.time() + 120
        while True:
            events = c.cli("history", "processes", "--host", str(host), "--since", "10m", "--limit", "100000")
            execs = {e["pid"]: e for e in events if e["kind"] == "exec" and e["pid"] in wanted}
            if len(execs) >= len(wanted) or time.time() > deadline:
                break
            time.sleep(2)
        read = sum(1 for e in execs.values() if e.get("exe") == true_exe and e.get("cmdline") == ["/bin/true"])
        recorded_share.append(len(execs) / len(wanted) * 100)
        read_share.append(read / len(wanted) * 100)
        missing = sorted(wanted - set(execs))
        print(f"run {run + 1}: {len(wanted)} execs in {took:.1f} s ({len(wanted) / took:.0f}/s): "
              f"{len(execs)} recorded ({recorded_share[-1]:.2f} %), {read} read whole ({read_share[-1]:.1f} %)"
              + (f"; missing pids (of {pids[0]}..{pids[-1]}): {missing[:10]}" if missing else ""))
        time.sleep(5)
    stats = c.cli("host", str(host)).get("agent_stats", {})
    print(f"median of {a.runs}: recorded {statistics.median(recorded_share):.2f} % (target >= 99.9 %), "
          f"exe and cmdline read {statistics.median(read_share):.1f} %")
    print(f"agent: exec_events={stats.get('exec_events')} exec_read_misses={stats.get('exec_read_misses')} "
          f"events_lost={stats.get('events_lost')}")


if __name__ == "__main__":
    main()
