#!/usr/bin/env python3
"""Issue 11's cost figures: the collector's CPU per report over plain HTTP, over TLS, and with a
gzip body; and the bytes a report takes on the wire with and without gzip.

Each round starts a release collector (plain, or TLS with a certificate made by openssl: ECDSA
P-256, or RSA 2048 with --rsa), enrolls one host, then posts N reports over one keep-alive
connection, each a new sequence number, and reads the collector's CPU (user + system) before and
after. Two report sizes: this machine's real snapshot (`hostwatch-agent snapshot` while hostload.py runs
300 processes and 500 connections; every report replaces the host's state) and a heartbeat (no state). Modes alternate within each round; every
round is printed, then medians with min and max.

The agent's side of gzip is its `Compression::fast()` (level 1); its cost is estimated here with
zlib at level 1 on the same bytes (the same algorithm; the agent uses miniz_oxide).

Usage: cargo build --release && python3 bench/ingest_cost.py [--rounds 5] [--reports 500]
"""
import argparse, copy, gzip, http.client, json, os, ssl, statistics, subprocess, sys, tempfile, time, zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def certificate(dir, rsa):
    key, cert = os.path.join(dir, "key.pem"), os.path.join(dir, "cert.pem")
    algo = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", *algo, "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return key, cert


def snapshot():
    out = subprocess.run([harness.binary("hostwatch-agent"), "snapshot"], env={"HOSTWATCH_CLOUD_PROVIDER": "none"},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def connect(url, cafile):
    host, port = url.split("//")[1].rsplit(":", 1)
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=cafile)
        return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    return http.client.HTTPConnection(host, int(port), timeout=30)


def enroll(conn, secret, facts):
    body = json.dumps({"enroll_secret": secret, "host": facts,
                       "agent": {"version": "0.0.1", "interval_secs": 10, "started_at": "2026-01-01T00:00:00Z",
                                 "coverage": {"state": "full"}}})
    conn.request("POST", "/api/v1/enroll", body, {"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"enroll: {r.status} {data[:200]!r}")
    return json.loads(data)["node_key"]


def run(mode, kind, n, snap, rsa):
    tmp = tempfile.mkdtemp(prefix="hw-bench-cost-")
    # One host sends them all, back to back: its rate is lifted (the default would 429 it).
    extra, cafile = "[limits]\nreports_per_host_per_minute = 600000\n", None
    if mode == "tls":
        key, cert = certificate(tmp, rsa)
        extra += f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        cafile = cert
    c = harness.Collector(extra)
    conn = connect(c.url, cafile)
    secret = open(c.secret_file).read().strip()
    key = enroll(conn, secret, snap["host"])
    report = copy.deepcopy(snap)
    report["session"] = 11
    if kind == "heartbeat":
        report.pop("snapshot", None)
        report.pop("delta", None)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if mode == "gzip":
        headers["content-encoding"] = "gzip"
    bodies = []
    for seq in range(1, n + 1):
        report["seq"] = seq
        raw = json.dumps(report).encode()
        bodies.append(gzip.compress(raw, compresslevel=1) if mode == "gzip" else raw)
    wire = statistics.mean(len(b) for b in bodies)
    # Warm: the first report of a session is a snapshot the collector may ask for anyway.
    cpu0, _ = harness.usage(c.pid)
    t0 = time.monotonic()
    for b in bodies:
        conn.request("POST", "/api/v1/report", b, headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"{mode} {kind}: report answered {r.status}")
    wall = time.monotonic() - t0
    cpu1, _ = harness.usage(c.pid)
    conn.close()
    c.proc.terminate()
    c.proc.wait(timeout=15)
    return {"mode": mode, "kind": kind, "cpu_ms_per_report": (cpu1 - cpu0) * 1000 / n,
            "wall_ms_per_report": wall * 1000 / n, "wire_bytes": wire}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reports", type=int, default=500)
    ap.add_argument("--rsa", action="store_true", help="an RSA 2048 certificate instead of ECDSA P-256")
    ap.add_argument("--procs", type=int, default=300, help="hostload.py processes while the snapshot is taken")
    ap.add_argument("--conns", type=int, default=500, help="hostload.py connections while the snapshot is taken")
    a = ap.parse_args()
    # A server's worth of processes and sockets to report, from the shared load tool.
    load = harness.load(a.procs, a.conns, 60)
    time.sleep(2)
    snap = snapshot()
    load.terminate()
    raw = json.dumps(snap).encode()
    t0 = time.process_time()
    for _ in range(50):
        zlib.compress(raw, 1)
    zlib_ms = (time.process_time() - t0) * 1000 / 50
    print(f"snapshot report: {len(snap['snapshot']['processes'])} processes, "
          f"{len(snap['snapshot']['listeners'])} listeners, {len(snap['snapshot'].get('connections', []))} "
          f"connections, {len(raw)} bytes; gzip level 1: {len(gzip.compress(raw, 1))} bytes, "
          f"{zlib_ms:.2f} ms to compress (zlib, the agent's side)")
    rows = []
    for r in range(a.rounds):
        for kind, n in (("snapshot", a.reports), ("heartbeat", a.reports * 4)):
            modes = ["plain", "tls", "gzip"] if r % 2 == 0 else ["gzip", "tls", "plain"]
            for mode in modes:
                if kind == "heartbeat" and mode == "gzip":
                    continue  # the agent gzips only bodies over 32 KiB
                x = run(mode, kind, n, snap, a.rsa)
                x["round"] = r + 1
                rows.append(x)
                print(json.dumps(x), flush=True)
    print(f"\ncollector CPU per report (ms), median (min-max) of {a.rounds} rounds; "
          f"{'RSA 2048' if a.rsa else 'ECDSA P-256'} certificate for TLS")
    for kind in ("snapshot", "heartbeat"):
        for mode in ("plain", "tls", "gzip"):
            v = [x["cpu_ms_per_report"] for x in rows if x["kind"] == kind and x["mode"] == mode]
            w = [x["wire_bytes"] for x in rows if x["kind"] == kind and x["mode"] == mode]
            if v:
                print(f"  {kind:9} {mode:5} {statistics.median(v):7.3f} ({min(v):.3f}-{max(v):.3f})   "
                      f"body {statistics.median(w):,.0f} bytes")


if __name__ == "__main__":
    main()
