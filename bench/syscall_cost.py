#!/usr/bin/env python3
"""What the eBPF connection source costs every other program on the host: the time of one
system call, with the agent's socket events on and off. Where the kernel refuses trampolines
(this machine), UDP connects are taken at the return of every system call (`sys_exit`), which
puts every system call of the host on the kernel's slower exit path and runs a few
instructions of BPF there; where it allows them (fexit), only datagram connects pay.

The call timed is getppid(2), the cheapest there is, so the figure is the worst case per call
(a real program's calls do more work each). A C loop (built here with cc) makes --calls of them
and prints nanoseconds per call; it runs --repeats times per round beside a release agent with
socket events on, then beside one with them off (HOSTWATCH_SOCKET_EVENTS=false), alternating
for --rounds. Every run is printed; medians with min and max.

Usage: cargo build --release && python3 bench/syscall_cost.py [--rounds 5] [--calls 20000000]
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hw-bench-syscall-")
    src, exe = os.path.join(work, "loop.c"), os.path.join(work, "loop")
    with open(src, "w") as f:
        f.write(LOOP)
    subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    c = harness.Collector()
    arms = {True: [], False: []}
    for rnd in range(1, a.rounds + 1):
        for on in (True, False) if rnd % 2 else (False, True):
            env = {} if on else {"HOSTWATCH_SOCKET_EVENTS": "false"}
            agent, host = c.start_agent(f"syscall-{rnd}-{int(on)}", **env)
            stats = c.cli("host", str(host)).get("agent_stats", {})
            if on and stats.get("connection_source") != "ebpf":
                sys.exit(f"the agent runs without eBPF: {stats.get('connection_source_why')}")
            time.sleep(10)  # past the agent's first full read
            runs = [float(subprocess.run([exe, str(a.calls)], capture_output=True, text=True,
                                         check=True).stdout) for _ in range(a.repeats)]
            arms[on].extend(runs)
            print(f"round {rnd} events {'on ' if on else 'off'}: ns per getppid: "
                  + ", ".join(f"{r:.1f}" for r in runs), flush=True)
            os.killpg(agent.pid, 15)
            agent.wait(timeout=30)
    for on in (True, False):
        r = arms[on]
        print(f"events {'on ' if on else 'off'}: median {statistics.median(r):.1f} ns "
              f"(min {min(r):.1f}, max {max(r):.1f}, {len(r)} runs)")
    on, off = statistics.median(arms[True]), statistics.median(arms[False])
    print(f"added per system call: {on - off:.1f} ns ({on / off:.2f}x of the cheapest call)")


if __name__ == "__main__":
    main()
