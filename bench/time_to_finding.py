#!/usr/bin/env python3
"""Time to a finding with `hostwatch serve --dev` at its default 10 s interval.

--what listener (default): from a new listener appearing on this machine to its
unexpected_listener finding. The design's target: within two intervals.
--what pool: from the start of one connection of 20 ms to a mining pool's port (127.0.0.2:3333,
a listener this script holds) by a program of a new name to its mining-pool-port finding; the
connection is over long before any scan, so only the eBPF socket events see it. Target: 2 s.

Usage: cargo build [--release] && python3 bench/time_to_finding.py [--what listener|pool]
       [--runs 5] [--interval 10s] [--build debug|release]
Prints each run's latency and min / median / p90 / max, in seconds and in intervals.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTWATCH = None

POOL_CLIENT = "import socket,time; s=socket.create_connection(('127.0.0.2',3333)); time.sleep(0.02); s.close()"


def cli(url, token_file, *args):
    env = {"HOSTWATCH_SERVER": url, "HOSTWATCH_TOKEN_FILE": token_file, "PATH": os.environ["PATH"]}
    out = subprocess.run([HOSTWATCH, *args, "--output", "json"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--what", choices=["listener", "pool"], default="listener")
    ap.add_argument("--build", choices=["debug", "release"], default="debug")
    a = ap.parse_args()
    global HOSTWATCH
    HOSTWATCH = os.path.join(ROOT, "target", a.build, "hostwatch")
    if not os.path.exists(HOSTWATCH):
        sys.exit(f"{HOSTWATCH} missing: run `cargo build{' --release' if a.build == 'release' else ''}` first")
    interval = float(a.interval.rstrip("s"))
    data = tempfile.mkdtemp(prefix="hw-ttf-")
    dev = subprocess.Popen([HOSTWATCH, "serve", "--dev", "--data-dir", data, "--listen", "127.0.0.1:0", "--interval", a.interval],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in dev.stdout:
            m = re.match(r"hostwatch dev collector on (http://[^,]+),", line)
            if m:
                url = m.group(1)
                break
        token = os.path.join(data, "admin-token")
        deadline = time.time() + 60
        while not any(h["status"] == "online" for h in cli(url, token, "hosts")):
            if time.time() > deadline:
                sys.exit("host never came online")
            time.sleep(0.2)
        if a.what == "pool":
            pool = socket.socket()
            pool.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            pool.bind(("127.0.0.2", 3333))
            pool.listen(64)
            time.sleep(2 * interval)  # the pool's own listener reported before the first run
        latencies = []
        for run in range(a.runs):
            if a.what == "listener":
                # A port of our choosing, closed again, so the listener is new to the baseline.
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                t0 = time.time()
                py = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                kind, subject = "unexpected_listener", f"tcp/127.0.0.1:{port}"
            else:
                # A program of a new name each run, so each run's finding is a new one.
                miner = os.path.join(data, f"hwminer{run}")
                shutil.copy(os.path.realpath(sys.executable), miner)
                t0 = time.time()
                py = subprocess.Popen([miner, "-c", POOL_CLIENT])
                kind, subject = "suspicious_process", f"tcp/127.0.0.2:3333 by {miner}"
            while True:
                found = [f for f in cli(url, token, "findings", "--kind", kind) if f["subject"] == subject]
                if found:
                    break
                if time.time() - t0 > 5 * interval:
                    sys.exit(f"run {run}: no finding after {5 * interval}s")
                time.sleep(0.1)
            dt = time.time() - t0
            latencies.append(dt)
            print(f"run {run + 1}: {dt:.2f} s ({dt / interval:.2f} intervals)", flush=True)
            py.terminate()
            py.wait()
            time.sleep(interval * 0.37)  # land the next start at a different point of the interval
        lo, med, hi = min(latencies), statistics.median(latencies), max(latencies)
        p90 = statistics.quantiles(latencies, n=10)[-1] if len(latencies) >= 2 else hi
        target = "target <= 2 intervals" if a.what == "listener" else "target <= 2 s"
        print(f"{a.what}, interval {interval:g} s, {a.runs} runs: min {lo:.2f} s, median {med:.2f} s, "
              f"p90 {p90:.2f} s, max {hi:.2f} s (max {hi / interval:.2f} intervals; {target})")
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=15)


if __name__ == "__main__":
    main()
