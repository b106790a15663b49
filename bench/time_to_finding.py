#!/usr/bin/env python3
"""Time to a finding with `hostwatch serve --dev` at its default 10 s interval.

--what listener (default): from a new listener appearing on this machine to its
unexpected_listener finding. The design's target: within two intervals.
--what pool: from the start of one connection of 20 ms to a mining pool's port (127.0.0.2:3333,
a listener this script holds) by a program of a new name to its mining-pool-port finding; the
connection is over long before any scan, so only the eBPF socket events see it. Target: 2 s.

Usage: cargo build --release && python3 bench/time_to_finding.py [--what listener|pool]
       [--runs 100] [--interval 10s] [--build release|debug] [--plot latency.png]
Prints each run's latency and min / p50 / p90 / p99 / max, in seconds and in intervals; with
--plot, their distribution as a PNG (python3-matplotlib). Runs start at spread points of the
agent's one-second tick and of its interval (a pause of 0.37 intervals between runs).
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTWATCH = None

POOL_CLIENT = "import socket,time; s=socket.create_connection(('127.0.0.2',3333)); time.sleep(0.02); s.close()"


def cli(url, token_file, *args):
    env = {"HOSTWATCH_SERVER": url, "HOSTWATCH_TOKEN_FILE": token_file, "PATH": os.environ["PATH"]}
    out = subprocess.run([HOSTWATCH, *args, "--output", "json"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def plot(latencies, a, p99):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(latencies, bins=40, color="#4472c4")
    ax.axvline(statistics.median(latencies), color="black", linestyle="--", label="p50")
    ax.axvline(p99, color="#c00000", linestyle=":", label="p99")
    ax.set_xlabel("seconds from the start of the program to its finding")
    ax.set_ylabel("runs")
    what = "new listener -> unexpected_listener" if a.what == "listener" else "20 ms pool connection -> finding"
    ax.set_title(f"{what}: {len(latencies)} runs, {a.build} build")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)
    print(f"plot: {a.plot}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--what", choices=["listener", "pool"], default="listener")
    ap.add_argument("--build", choices=["debug", "release"], default="release")
    ap.add_argument("--plot", help="write the latency distribution to this PNG")
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
        cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else [hi] * 99
        p90, p99 = cuts[89], cuts[98]
        target = "target <= 2 s" if a.what == "pool" else "target <= 2 intervals"
        print(f"{a.what}, {a.build} build, interval {interval:g} s, {a.runs} runs: min {lo:.2f} s, p50 {med:.2f} s, "
              f"p90 {p90:.2f} s, p99 {p99:.2f} s, max {hi:.2f} s (max {hi / interval:.2f} intervals; {target})")
        if a.plot:
            plot(latencies, a, p99)
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=15)


if __name__ == "__main__":
    main()
