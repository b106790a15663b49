#!/usr/bin/env python3
"""What the agent's probes (issue 19) cost, and how soon an open Redis is a finding.

1. Cost per probe, from outside the agent: each service sits behind a counting proxy on its
   conventional port (the port the agent guesses the protocol from), which forwards to the real
   server (redis-server, memcached) or to a double (tests/e2e/support/services.py) and records,
   for every connection the agent's probe makes, the bytes each way and how long it stayed open.
2. Time to a finding: --runs times, a new redis-server with protected mode off on every address
   is started, and the time until `hostwatch findings` lists its `unauthenticated_service` is
   taken (the collector and agent already running; the agent at its default interval).

The agent's CPU with probing on and off is measured by agent_ab.py, the same binary twice in the
same window (`--new-env HOSTWATCH_PROBES=false`, idle and `--load`).

Usage: cargo build --release --locked -p hostwatch-server -p hostwatch-agent &&
       python3 bench/probe_cost.py [--runs 20]
Needs redis-server and memcached (Debian packages). Everything stays on this machine.
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = os.path.join(ROOT, "tests", "e2e", "support", "services.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


class Proxy:
    """Listens on 0.0.0.0:`port`, forwards each connection to 127.0.0.1:`to`, and records
    (bytes from the client, bytes to the client, seconds open) per connection."""

    def __init__(self, port, to):
        self.to, self.records, self.lock = to, [], threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(16)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(client,), daemon=True).start()

    def one(self, client):
        start = time.monotonic()
        try:
            server = socket.create_connection(("127.0.0.1", self.to), timeout=10)
        except OSError:
            client.close()
            return
        counts = [0, 0]

        def pipe(a, b, i):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    counts[i] += len(data)
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pipe, args=(server, client, 1), daemon=True)
        t.start()
        pipe(client, server, 0)
        t.join(15)
        with self.lock:
            self.records.append((counts[0], counts[1], time.monotonic() - start))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20, help="open Redis servers timed to their finding")
    ap.add_argument("--gap", type=float, default=1.0,
                    help="seconds between runs: keeps the probes under the agent's 30 a minute, so no run "
                         "waits for the rate limit")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hw-probe-bench-")
    harness._made.append(work)
    c = harness.Collector()
    agent, host = c.start_agent("probes")

    # 1. Cost per probe, behind counting proxies on the conventional ports.
    backends = []
    redis_port, memcached_port = free_port(), free_port()
    backends.append(harness.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL))
    backends.append(harness.start(["memcached", "-p", str(memcached_port), "-l", "127.0.0.1", "-U", "0", "-u", "nobody"],
                                  stdout=subprocess.DEVNULL))
    doubles = {}
    for kind in ("docker", "elasticsearch", "mongodb", "metrics", "jupyter", "kubelet"):
        port = free_port()
        backends.append(harness.start([sys.executable, SERVICES, kind, "open", str(port)], stdout=subprocess.DEVNULL))
        doubles[kind] = port
    for p in [redis_port, memcached_port, *doubles.values()]:
        wait_port(p)
    conventional = {"redis": (6379, redis_port), "memcached": (11211, memcached_port),
                    "docker": (2375, doubles["docker"]), "elasticsearch": (9200, doubles["elasticsearch"]),
                    "mongodb": (27017, doubles["mongodb"]), "metrics": (9100, doubles["metrics"]),
                    "jupyter": (8888, doubles["jupyter"]), "kubelet": (10255, doubles["kubelet"])}
    proxies = {name: Proxy(port, to) for name, (port, to) in conventional.items()}
    deadline = time.time() + 120
    while time.time() < deadline and not all(p.records for p in proxies.values()):
        time.sleep(0.5)
    # A probe may take a second connection (Docker's two requests where keep-alive is not used):
    # the agent probes one listener at a time, so a few seconds after the last first connection
    # every probe is whole.
    time.sleep(5)
    print("cost per probe (every connection the probe made; bytes it sent / received, time open):")
    for name, p in proxies.items():
        with p.lock:
            records = list(p.records)
        if not records:
            print(f"  {name:14} not probed within 120 s")
            continue
        sent, got = sum(r[0] for r in records), sum(r[1] for r in records)
        secs = sum(r[2] for r in records)
        print(f"  {name:14} {len(records)} connection(s), sent {sent:5d} B, received {got:6d} B, "
              f"{secs * 1000:7.1f} ms open")

    # 2. Time from a new open Redis on every address to its finding.
    samples, misses = [], []
    for i in range(a.runs):
        port = free_port()
        r = harness.start(["redis-server", "--port", str(port), "--bind", "0.0.0.0", "--protected-mode", "no",
                           "--save", "", "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        subject = f"redis on tcp/0.0.0.0:{port}"
        while True:
            found = [f for f in c.cli("findings", "--host", str(host), "--kind", "unauthenticated_service")
                     if f["subject"] == subject]
            if found:
                samples.append(time.monotonic() - t0)
                break
            if time.monotonic() - t0 > 60:
                break
            time.sleep(0.05)
        if not found:
            # A miss is a figure too: say what the collector had of the listener, and go on.
            alive = "running" if r.poll() is None else f"exited with {r.returncode}"
            seen = c.cli("ports", "--host", str(host), "--port", str(port))
            misses.append(i + 1)
            print(f"  run {i + 1}: no finding for {subject} within 60 s; redis-server {alive}; "
                  f"the collector's listeners on the port: {seen}", flush=True)
            harness.stop(r)
            continue
        harness.stop(r)
        print(f"  run {i + 1}: {samples[-1]:.2f} s ({found[0]['severity']})", flush=True)
        time.sleep(a.gap)
    if not samples:
        sys.exit(f"no run had its finding within 60 s (runs {misses})")
    q = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
    print(f"new open Redis to its critical finding, {len(samples)} of {a.runs} runs: p50 {statistics.median(samples):.2f} s, "
          f"p99 {q[98]:.2f} s, min {min(samples):.2f} s, max {max(samples):.2f} s; missed (no finding in 60 s): {misses or 'none'}")
    if misses:
        sys.exit(1)


if __name__ == "__main__":
    main()
