#!/usr/bin/env python3
"""The eBPF connection source: what it catches and what it costs. A loopback listener and a
client (a copy of python3 under a name of its own) that opens --rate new TCP connections a
second, each held 20 ms, for --seconds; the agent (release build, default 10 s interval) with
socket events on, then off (HOSTWATCH_SOCKET_EVENTS=false), alternating for --rounds.

Per run: the agent's CPU (% of one core) over the window, as a whole process from /proc; and,
with events on, the capture rate: connections in the collector's socket history with the
client's executable, of those made (each counted by its opening).

Usage: cargo build --release && python3 bench/connection_events.py [--rate 200] [--seconds 60]
       [--rounds 3]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

# Opens one connection every 1/rate s and closes each 20 ms after it opened: about rate / 50
# open at once, so the rate holds whatever each connection's life.
CLIENT = """
import collections, socket, sys, time
port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
start = time.monotonic(); n = 0; held = collections.deque()
while time.monotonic() - start < seconds:
    now = time.monotonic()
    while held and held[0][0] <= now:
        held.popleft()[1].close()
    if start + n / rate <= now:
        held.append((now + 0.02, socket.create_connection(('127.0.0.1', port)))); n += 1
    wake = min([start + n / rate] + ([held[0][0]] if held else []))
    pause = wake - time.monotonic()
    if pause > 0:
        time.sleep(pause)
for _, s in held:
    s.close()
print(n, flush=True)
"""

SERVER = """
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', 0)); l.listen(1024); print(l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept(); c.close()
"""


def history(c, host):
    req = urllib.request.Request(f"{c.url}/api/v1/history/sockets?host={host}&limit=100000",
                                 headers={"Authorization": f"Bearer {c.token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def one_run(events_on, a, workdir, rnd):
    c = harness.Collector("[findings]\nmax_new_per_host_per_minute = 1000000\n")
    env = {} if events_on else {"HOSTWATCH_SOCKET_EVENTS": "false"}
    agent, host = c.start_agent(f"conn-{rnd}-{'on' if events_on else 'off'}", **env)
    stats = c.cli("host", str(host)).get("agent_stats", {})
    source = stats.get("connection_source")
    if events_on and source != "ebpf":
        sys.exit(f"the agent runs without eBPF: {stats.get('connection_source_why')}")
    server = harness.start([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    exe = os.path.join(workdir, f"hwbench-conn-{rnd}-{int(events_on)}")
    shutil.copy(os.path.realpath("/usr/bin/python3"), exe)
    time.sleep(15)  # past the agent's start
    cpu0, _ = harness.usage(agent.pid)
    t0 = time.monotonic()
    client = subprocess.run([exe, "-c", CLIENT, str(port), str(a.rate), str(a.seconds)],
                            capture_output=True, text=True)
    if client.returncode != 0:
        sys.exit(f"the client failed: {client.stderr.strip()[-2000:]}")
    elapsed = time.monotonic() - t0
    cpu1, rss = harness.usage(agent.pid)
    made = int(client.stdout.strip())
    pct = (cpu1 - cpu0) / elapsed * 100
    caught = None
    if events_on:
        time.sleep(5)  # the last report
        # One opening per connection (not per local port: loopback reuses ports in TIME_WAIT).
        caught = sum(1 for e in history(c, host)
                     if e["kind"] == "open" and e["socket"] == "connection" and e.get("remote_port") == port
                     and e.get("direction") == "outbound" and e.get("exe") == exe)
    stats = c.cli("host", str(host)).get("agent_stats", {})
    line = (f"round {rnd} events {'on ' if events_on else 'off'}: agent CPU {pct:.3f} % of one core, "
            f"RSS {rss / 2**20:.1f} MiB, {made} connections in {elapsed:.0f} s ({made / elapsed:.0f}/s)")
    if caught is not None:
        line += f", {caught} with their owner ({caught / made * 100:.2f} %)"
    line += f"; socket_events={stats.get('socket_events')} dropped={stats.get('socket_events_dropped')}"
    print(line, flush=True)
    harness._stop_all()
    harness._started.clear()
    return pct, caught, made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="hw-bench-conn-", dir="/run")
    on, off, rates = [], [], []
    try:
        for rnd in range(1, a.rounds + 1):
            for events_on in (True, False) if rnd % 2 else (False, True):
                pct, caught, made = one_run(events_on, a, workdir, rnd)
                (on if events_on else off).append(pct)
                if caught is not None:
                    rates.append(caught / made * 100)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"events on:  median {statistics.median(on):.3f} % (min {min(on):.3f}, max {max(on):.3f})")
    print(f"events off: median {statistics.median(off):.3f} % (min {min(off):.3f}, max {max(off):.3f})")
    print(f"ratio on / off {statistics.median(on) / statistics.median(off):.2f}x")
    print(f"capture with owner: median {statistics.median(rates):.2f} % (min {min(rates):.2f}, max {max(rates):.2f})")


if __name__ == "__main__":
    main()
