#!/usr/bin/env python3
"""The collector under a fleet: N simulated agents (target/release/hostwatch-load) against a
release collector on SQLite, at the agents' default 10 s interval, on this machine (the generator
shares it: its own CPU is reported beside the collector's).

For each N in --agents, --rounds times (alternating the order of N between rounds): a fresh
collector, then the generator for --duration seconds; the first --warmup seconds (enrollments
and every agent's first snapshot) are reported apart. Every run is printed, then per N the
medians with min and max.

The collector runs with its defaults except what a fleet's operator sizes: connections open at
once (`max_connections`, two per agent) and enrollments per source address (a fleet that boots
at once; the generator spreads agents over 127.0.0.x, 400 per address, under the per-address
connection cap).

Agents boot at random moments of the first --boot-over seconds (60: a running fleet, whose hosts
came up one by one), then the warm-up runs to 90 s, so that the steady window is a fleet at work.
`--boot-over 10` is a fleet booting at once (or coming back to a restarted collector): at 5,000
agents its first snapshots (5,000 x 175 KB within 10 s) are answered in up to about 9 s for the
first half minute (BENCHMARKS.md). The RSS peak of the warm-up is reported apart.

With --trace-dir, every report of each run (time sent, latency, agent, outcome, kind, warm-up or
window) is kept there, one file per run (hostwatch-load --trace), for a look at when the slow
ones came.

With --against DIR (another build's target/release, an older commit's), each round runs that
build's collector beside this one's, in alternating order, both driven by this build's generator:
the side-by-side comparison of two versions of the collector, reported per build.

With --postgres, each run's store is a fresh private PostgreSQL 15 (harness.Postgres: on a Unix
socket, shared_buffers 1 GB, durability as shipped) instead of SQLite, and its CPU over the
window is reported beside the collectors'. --collectors N runs N collectors on it, the agents
spread over them in turn (each simulated agent keeps its collector, as behind a load balancer
with affinity); --pin puts collector i on core i alone (taskset), the database and the generator
sharing the machine: the ratio of two pinned collectors to one is a lower bound of scale-out
(here they share two cores with PostgreSQL and the generator).

Usage: cargo build --release && python3 bench/collector_scale.py [--agents 1000,2000,5000]
       [--rounds 5] [--duration 150] [--warmup 90] [--boot-over 60] [--processes 300]
       [--trace-dir DIR] [--against DIR] [--postgres [--collectors N] [--pin]]
"""
import argparse, json, math, os, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def one_run(n, a, rnd, target=None, label=""):
    extra = (f"[limits]\nmax_connections = {max(4096, 2 * n)}\n"
             f"enrollments_per_address_per_minute = 100000\n")
    db = None
    if a.postgres:
        db = harness.Postgres()
        extra = f"database = {json.dumps(db.url)}\n" + extra
    cs = []
    for i in range(a.collectors):
        wrap = ["taskset", "-c", str(i % os.cpu_count())] if a.pin else []
        data = os.path.join(cs[0].dir, "server") if cs else None
        cs.append(harness.Collector(extra, target=target, data=data, wrap=wrap))
    c = cs[0]
    # The database's CPU over the steady window, sampled from here at its edges.
    db_cpu = {}
    if db:
        def sample():
            time.sleep(a.warmup)
            db_cpu["begin"] = (time.time(), db.cpu(), db.counters())
        threading.Thread(target=sample, daemon=True).start()
    sources = max(1, math.ceil(n / 400))
    out = subprocess.run([harness.binary("hostwatch-load"), "--server", ",".join(x.url for x in cs),
                          "--secret-file", c.secret_file,
                          "--agents", str(n), "--duration", str(a.duration), "--warmup", str(a.warmup),
                          "--boot-over", str(a.boot_over),
                          "--sources", str(sources), "--processes", str(a.processes),
                          "--collector-pid", ",".join(str(x.pid) for x in cs), "--json"]
                         + (["--trace", os.path.join(a.trace_dir, f"{n}-agents-round-{rnd + 1}{label.strip()}.txt")]
                            if a.trace_dir else []),
                         capture_output=True, text=True, timeout=a.duration + 120)
    if db and "begin" in db_cpu:
        t0, c0, (x0, w0) = db_cpu["begin"]
        elapsed = time.time() - t0
        db_cpu["percent"] = round((db.cpu() - c0) / elapsed * 100, 1)
        x1, w1 = db.counters()
        db_cpu["commits_per_sec"] = round((x1 - x0) / elapsed, 1)
        db_cpu["rows_per_sec"] = round((w1 - w0) / elapsed, 1)
    for x in cs:
        x.proc.terminate()
        x.proc.wait(timeout=30)
    if not out.stdout.strip():
        sys.exit(f"hostwatch-load printed nothing: {out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    r["database_cpu_percent"] = db_cpu.get("percent")
    # Per report accepted over the same window (the generator's window and this one's edges
    # differ by the sampling, well under a second of 60).
    for k in ("commits", "rows"):
        v = db_cpu.get(f"{k}_per_sec")
        r[f"database_{k}_per_report"] = round(v / r["accepted_per_sec"], 1) if v and r["accepted_per_sec"] else None
    r["database_mib"] = round(db.size_mib()) if db else None
    if db and os.environ.get("HW_PG_STATEMENTS"):
        # Where the database's time went (HW_PG_STATEMENTS=1: pg_stat_statements loaded).
        db.psql("hw", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        print(db.psql("hw", "SELECT round(total_exec_time)::text || ' ms ' || calls || ' calls ' || "
                            "left(regexp_replace(query, '\\s+', ' ', 'g'), 140) FROM pg_stat_statements "
                            "ORDER BY total_exec_time DESC LIMIT 25"), flush=True)
    if db:
        db.stop()
    print(f"{n} agents{label}: offered {r['offered_per_sec']}/s, accepted {r['accepted_per_sec']}/s, "
          f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, not accepted {r['not_accepted']} "
          f"{r['outcomes']}, warm-up {r['warmup_outcomes']}{'' if not r['transport_errors'] else ' ' + str(r['transport_errors'])}, enroll failures {r['enroll_failures']}; "
          f"collector CPU {r['collector_cpu_percent']} %, RSS max {r['collector_rss_max_mib']} MiB "
          f"(warm-up {r['collector_rss_warmup_max_mib']} MiB); "
          f"generator CPU {r['generator_cpu_percent']} %"
          + (f"; PostgreSQL CPU {r['database_cpu_percent']} %, {r['database_commits_per_report']} commits and "
             f"{r['database_rows_per_report']} rows written a report, database {r['database_mib']} MiB" if a.postgres else ""),
          flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="1000,2000,5000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=90)
    ap.add_argument("--boot-over", type=int, default=60)
    ap.add_argument("--processes", type=int, default=300)
    ap.add_argument("--trace-dir")
    ap.add_argument("--against", help="another build's target directory, run side by side")
    ap.add_argument("--postgres", action="store_true", help="a private PostgreSQL as the store")
    ap.add_argument("--collectors", type=int, default=1, help="collectors on the one PostgreSQL")
    ap.add_argument("--pin", action="store_true", help="each collector on one core of its own")
    a = ap.parse_args()
    if a.collectors > 1 and not a.postgres:
        sys.exit("--collectors needs --postgres: collectors share a PostgreSQL store, not a SQLite file")
    sizes = [int(x) for x in a.agents.split(",")]
    if a.trace_dir:
        os.makedirs(a.trace_dir, exist_ok=True)
    store = (" on PostgreSQL" + (f", {a.collectors} collectors" if a.collectors > 1 else "")
             + (" pinned" if a.pin else "")) if a.postgres else ""
    builds = [(None, store)] + ([(a.against, store + " (against)")] if a.against else [])
    runs = {(n, label): [] for n in sizes for _, label in builds}
    for rnd in range(a.rounds):
        order = builds if rnd % 2 == 0 else list(reversed(builds))
        for n in (sizes if rnd % 2 == 0 else list(reversed(sizes))):
            for target, label in order:
                runs[(n, label)].append(one_run(n, a, rnd, target, label))
    for (n, label), rs in runs.items():

        def fig(k):
            v = [r[k] for r in rs if r[k] is not None]
            return f"{statistics.median(v):g} ({min(v):g}-{max(v):g})" if v else "-"
        print(f"{n} agents{label}, {len(rs)} runs: accepted/s {fig('accepted_per_sec')} of {rs[0]['offered_per_sec']}, "
              f"p50 {fig('p50_ms')} ms, p99 {fig('p99_ms')} ms, max {fig('max_ms')} ms, not accepted {fig('not_accepted')}, "
              f"collector CPU {fig('collector_cpu_percent')} %, RSS {fig('collector_rss_max_mib')} MiB "
              f"(warm-up {fig('collector_rss_warmup_max_mib')} MiB), "
              f"generator CPU {fig('generator_cpu_percent')} %"
              + (f", PostgreSQL CPU {fig('database_cpu_percent')} %, commits a report {fig('database_commits_per_report')}, "
                 f"rows written a report {fig('database_rows_per_report')}, database {fig('database_mib')} MiB" if a.postgres else ""))


if __name__ == "__main__":
    main()
