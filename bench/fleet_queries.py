#!/usr/bin/env python3
"""Fleet queries on a store of 10,000 hosts (issue 16): the incident questions, each asked
through the `hostwatch` CLI as a whole process (start, TLS-less HTTP to the collector on
loopback, the store's answer, JSON out), as a filter and as read-only SQL.

The store is filled by target/release/hostwatch-fill (through the store's own code: every host
a snapshot of --processes processes, --listeners listeners and --connections connections, then a
day of deltas; a miner planted on every hundredth host, SSH on 0.0.0.0 on every twentieth) into
--dir, once: a later run with the same --dir reuses it. The collector runs on it with
`offline_after` and `retire_after` long enough that nothing changes the store during the
measurement (the fill's hosts reported up to a day ago).

Each question runs once to warm the page cache, then --rounds times, in alternating order
(forward, then backward); every run is printed, then per question the median with min and max,
the rows answered, and whether the CLI said more rows remain (history listings show the newest
1,000 by default, and say how to go on). The floor (the CLI answering the smallest listing there
is) is measured the same way: what any question costs before the store does anything.

With --postgres, the store is a private PostgreSQL 15 cluster kept in --dir (harness.Postgres),
filled the same way, and the SQL questions are asked in PostgreSQL's dialect (addresses by
`<<=`, times by `now() - interval`) as the analysts' role of its own (`query_database`).

Usage: cargo build --release --bin hostwatch --bin hostwatch-fill && \
       python3 bench/fleet_queries.py [--dir /var/tmp/hw-fleet] [--hosts 10000] [--rounds 7] [--postgres]
"""
import argparse, json, os, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

MINER = "5e2d1ab7c0ffee00deadbeef5e2d1ab7c0ffee00deadbeef5e2d1ab7c0ffee00"


def questions(postgres=False):
    hour_ago = "now() - interval '1 hour'" if postgres else "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')"
    in_ten = ("remote_address <<= '10.0.0.0/8'" if postgres else
              "likelihood(remote_key BETWEEN cidr_first('10.0.0.0/8') AND cidr_last('10.0.0.0/8'), 0.9)")
    return [
        ("floor: a hash no host runs (filter)", ["ps", "--sha256", "0" * 64]),
        ("every host (hosts)", ["hosts"]),
        ("hosts running this sha256 (filter)", ["ps", "--sha256", MINER]),
        ("hosts running this sha256 (SQL)",
         ["query", f"SELECT DISTINCT host_id, hostname FROM processes WHERE sha256 = '{MINER}'"]),
        ("hosts listening on 0.0.0.0:22 (filter)", ["ports", "--port", "22", "--address", "0.0.0.0"]),
        ("hosts listening on 0.0.0.0:22 (SQL)",
         ["query", "SELECT host_id, hostname, process FROM listeners WHERE port = 22 AND address = '0.0.0.0'"]),
        ("connections to 10.0.0.0/8 in the last hour (filter, newest 1,000)",
         ["history", "sockets", "--remote", "10.0.0.0/8", "--since", "1h"]),
        ("hosts with connections to 10.0.0.0/8 in the last hour (SQL)",
         ["query", "SELECT hostname, count(*) AS connections FROM socket_events "
                   "WHERE socket = 'connection' AND kind = 'open' "
                   f"AND {in_ten} AND at >= {hour_ago} GROUP BY hostname"]),
        ("open findings by workload (SQL)",
         ["query", "SELECT workload, severity, count(*) AS findings FROM findings WHERE status = 'open' "
                   "GROUP BY workload, severity"]),
        ("open high and critical findings of one workload (filter)",
         ["findings", "--workload", "db", "--severity", "high"]),
        ("connections to 10.0.0.0/8:5432 now (filter, first 1,000)",
         ["conns", "--remote", "10.0.0.0/8", "--port", "5432", "--limit", "1000"]),
    ]


def ask(c, argv):
    env = {"HOSTWATCH_SERVER": c.url, "HOSTWATCH_TOKEN": c.token}
    began = time.perf_counter()
    out = subprocess.run([harness.binary("hostwatch"), *argv, "--output", "json"], env=env,
                         capture_output=True, text=True)
    ms = (time.perf_counter() - began) * 1000
    if out.returncode != 0:
        sys.exit(f"hostwatch {' '.join(argv)} failed: {out.stderr.strip()}")
    return ms, len(json.loads(out.stdout)), "more remain" in out.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/var/tmp/hw-fleet")
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--processes", type=int, default=300)
    ap.add_argument("--listeners", type=int, default=50)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--postgres", action="store_true", help="the store on a private PostgreSQL kept in --dir")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    db = os.path.join(a.dir, "hostwatch.db")
    pg = None
    if a.postgres:
        pg = harness.Postgres(keep=os.path.join(a.dir, "pg"))
        db = pg.url
        filled = (pg.psql("hw", "SELECT to_regclass('public.hosts') IS NOT NULL") == "t"
                  and pg.psql("hw", "SELECT EXISTS (SELECT 1 FROM hosts)") == "t")
    else:
        filled = os.path.exists(db)
    if not filled:
        began = time.time()
        out = subprocess.run([harness.binary("hostwatch-fill"), "--db", db, "--hosts", str(a.hosts),
                              "--processes", str(a.processes), "--listeners", str(a.listeners),
                              "--connections", str(a.connections)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"hostwatch-fill failed: {out.stderr[-2000:]}")
        print(f"filled in {time.time() - began:.0f} s: {out.stdout.strip()}", flush=True)
    if pg:
        size = pg.size_mib() * 2**20
        pg.psql("hw", "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hw_query') THEN "
                      "CREATE ROLE hw_query LOGIN; END IF; END $$; GRANT USAGE ON SCHEMA hostwatch_views TO hw_query; "
                      "GRANT SELECT ON ALL TABLES IN SCHEMA hostwatch_views TO hw_query; ANALYZE")
        query_db = f'query_database = "{pg.url.replace("hostwatch@", "hw_query@")}"\n'
    else:
        size = sum(os.path.getsize(os.path.join(a.dir, f)) for f in os.listdir(a.dir) if f.startswith("hostwatch.db"))
        query_db = ""
    print(f"store: {db}, {size / 2**30:.2f} GiB", flush=True)
    data = os.path.join(a.dir, "server-pg" if pg else "server")
    os.makedirs(data, mode=0o700, exist_ok=True)
    token_file = os.path.join(data, "admin-token")
    c = harness.Collector(f'database = "{db}"\n{query_db}offline_after = "30d"\nretire_after = "60d"\n', data=data)
    c.token = open(token_file).read().strip()
    qs = questions(postgres=bool(pg))
    for _, argv in qs:
        ask(c, argv)
    runs = {label: [] for label, _ in qs}
    answered = {}
    for r in range(a.rounds):
        order = qs if r % 2 == 0 else list(reversed(qs))
        for label, argv in order:
            ms, rows, more = ask(c, argv)
            runs[label].append(ms)
            answered[label] = (rows, more)
        print(f"round {r + 1}: " + ", ".join(f"{runs[l][-1]:.1f}" for l, _ in qs) + " ms", flush=True)
    print()
    print("| question | median (min-max) ms | rows | every run (ms) |")
    print("|---|---|---|---|")
    for label, _ in qs:
        t = runs[label]
        rows, more = answered[label]
        print(f"| {label} | {statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) | "
              f"{rows}{' (more remain)' if more else ''} | {', '.join(f'{x:.1f}' for x in t)} |")
    c.proc.terminate()
    c.proc.wait(timeout=30)


if __name__ == "__main__":
    main()
