#!/usr/bin/env python3
"""Time from a new listener appearing on this machine to its unexpected_listener finding, with
`hostwatch serve --dev` at its default 10 s interval. The design's target: within two intervals.

Usage: cargo build && python3 bench/time_to_finding.py [--runs 5] [--interval 10s]
Prints each run's latency and min / median / max, in seconds and in intervals.
"""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTWATCH = os.path.join(ROOT, "target", "debug", "hostwatch")


def cli(url, token_file, *args):
    env = {"HOSTWATCH_SERVER": url, "HOSTWATCH_TOKEN_FILE": token_file, "PATH": os.environ["PATH"]}
    out = subprocess.run([HOSTWATCH, *args, "--output", "json"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", default="10s")
    a = ap.parse_args()
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
        latencies = []
        for run in range(a.runs):
            # A port of our choosing, closed again, so the listener is new to the baseline.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            t0 = time.time()
            py = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subject = f"tcp/127.0.0.1:{port}"
            while True:
                found = [f for f in cli(url, token, "findings", "--kind", "unexpected_listener") if f["subject"] == subject]
                if found:
                    break
                if time.time() - t0 > 5 * interval:
                    sys.exit(f"run {run}: no finding after {5 * interval}s")
                time.sleep(0.1)
            dt = time.time() - t0
            latencies.append(dt)
            print(f"run {run + 1}: {dt:.2f} s ({dt / interval:.2f} intervals)")
            py.terminate()
            py.wait()
            time.sleep(interval * 0.37)  # land the next start at a different point of the interval
        lo, med, hi = min(latencies), statistics.median(latencies), max(latencies)
        print(f"interval {interval:g} s, {a.runs} runs: min {lo:.2f} s, median {med:.2f} s, max {hi:.2f} s "
              f"(max {hi / interval:.2f} intervals; target <= 2)")
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=15)


if __name__ == "__main__":
    main()
