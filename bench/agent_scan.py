#!/usr/bin/env python3
"""The scan benchmark (agent/benches/scan.rs) under the load of hostload.py: 1,000 extra
processes and 5,000 established loopback connections (10,000 sockets).

Usage: python3 bench/agent_scan.py [--rounds 9] [--no-load]
"""
import argparse, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--no-load", action="store_true")
    a = ap.parse_args()
    # Built before the load starts, so that compiling is not measured against it.
    subprocess.run(["cargo", "bench", "-p", "hostwatch-agent", "--bench", "scan", "--no-run"], cwd=harness.ROOT,
                   check=True)
    if not a.no_load:
        harness.load(1000, 5000, 900)
        # The agent reads a process whole again while it is younger than 10 s (programs rename
        # themselves and change cgroups early): a steady state starts once the load is older.
        time.sleep(15)
    subprocess.run(["cargo", "bench", "-p", "hostwatch-agent", "--bench", "scan", "--", str(a.rounds)],
                   cwd=harness.ROOT, check=True)


if __name__ == "__main__":
    main()
