#!/usr/bin/env python3
"""File integrity side by side with AIDE over one tree (default /usr), as whole processes: AIDE
0.18 with sha256 as its only hash, at its fastest worker count on this machine, against the
agent's file monitor (agent/benches/fim.rs: the same scan code, 8 hashing threads, the byte rate
budget lifted, files above the agent's 128 MiB hash cap recorded by metadata only: the script
counts such files in the tree and says so beside the ratios).

First AIDE's worker counts are chosen, one for each mode: at each of --workers (default
1,2,4,8), --sweep times (default 2), `aide --init` with a cold page cache and then `aide --check`
warm; the fastest median of each mode wins (they differ: more workers help the cold init and
can slow the warm check). Then --rounds rounds (default 5), the two sides taking turns going
first:

  cold read     every regular file read once, 4 at a time, page cache dropped first (the limit)
  aide --init   page cache dropped first;   ours: the initial manifest, cold the same way
  aide --check  warm (right after --init);  ours: full verification re-hashing everything, warm,
                                            and the routine check trusting (inode, size, mtime,
                                            ctime), warm

Wall time, CPU and peak RSS of each, by wait4; every round printed, then median, min and max of
each and of each ratio (taken within a round). Drops the page cache (root; it slows the machine
for a while): run it on a quiet machine.

Usage: python3 bench/fim_vs_aide.py [--path /usr] [--rounds 5] [--workers 1,2,4,8] [--sweep 2]
"""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HASH_CAP = 128 << 20  # agent/src/config: files.hash_max_size's default, as agent/benches/fim.rs


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(argv, shell=False, stdout=subprocess.DEVNULL):
    """Wall seconds, CPU seconds, peak RSS (MiB) of one command, by wait4."""
    start = time.monotonic()
    p = subprocess.Popen(argv, shell=shell, stdout=stdout, stderr=subprocess.PIPE)
    if stdout == subprocess.PIPE:
        p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    # aide exits 1..7 when it finds differences.
    if code != 0 and not (isinstance(argv, list) and "aide" in argv[0] and code < 8):
        sys.exit(f"{argv}: exit {code}: {err.decode(errors='replace')[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def aide_conf(tmp, path, workers):
    conf = os.path.join(tmp, f"aide-{workers}.conf")
    with open(conf, "w") as f:
        f.write(f"database_in=file:{tmp}/aide.db\ndatabase_out=file:{tmp}/aide.db.new\ngzip_dbout=no\n"
                f"num_workers={workers}\nreport_url=file:/dev/null\n"
                f"Rule = p+i+n+u+g+s+m+c+sha256+ftype+l\n{path} Rule\n")
    return conf


def tree_facts(path):
    files = dirs = size = over = over_bytes = 0
    for top, ds, fs in os.walk(path):
        dirs += 1
        # -xdev: stay on the tree's filesystem.
        ds[:] = [d for d in ds if not os.path.ismount(os.path.join(top, d))]
        for name in fs:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_mode & 0o170000) == 0o100000:
                files += 1
                size += st.st_size
                if st.st_size > HASH_CAP:
                    over += 1
                    over_bytes += st.st_size
    return files, dirs, size, over, over_bytes


def spread(v):
    return statistics.median(v), min(v), max(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="/usr")
    ap.add_argument("--rounds", type=int, default=5, help="0: the sweep alone")
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--sweep", type=int, default=2, help="cold aide --init runs per worker count")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: dropping the page cache needs it")
    if not shutil.which("aide"):
        sys.exit("aide not found: apt-get install aide")
    build = subprocess.run(["cargo", "bench", "-p", "hostwatch-agent", "--bench", "fim", "--no-run"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    m = re.search(r"Executable benches/fim.rs \((\S+)\)", build.stderr + build.stdout)
    if not m:
        sys.exit("cannot find the fim benchmark executable:\n" + build.stderr)
    fim = os.path.join(ROOT, m.group(1))
    version = subprocess.run(["aide", "--version"], capture_output=True, text=True)
    version = (version.stdout + version.stderr).splitlines()[0]
    tmp = tempfile.mkdtemp(prefix="hw-fim-")
    try:
        files, dirs, size, over, over_bytes = tree_facts(a.path)
        print(f"tree {a.path}: {files} files, {dirs} directories, {size / 1e9:.2f} GB; {version}")
        print(f"files above the agent's {HASH_CAP >> 20} MiB hash cap (metadata only, AIDE hashes them): "
              f"{over} ({over_bytes / 1e9:.2f} GB, {100 * over_bytes / max(size, 1):.1f}% of the bytes)")

        # AIDE's fastest worker count here for each mode: --init cold, --check warm.
        sweep_init, sweep_check = {}, {}
        for w in [int(x) for x in a.workers.split(",")]:
            conf = aide_conf(tmp, a.path, w)
            inits, checks = [], []
            for _ in range(a.sweep):
                drop_caches()
                inits.append(run(["aide", "-c", conf, "--init"])[0])
                os.replace(os.path.join(tmp, "aide.db.new"), os.path.join(tmp, "aide.db"))
                checks.append(run(["aide", "-c", conf, "--check"])[0])
            sweep_init[w], sweep_check[w] = inits, checks
            print(f"num_workers={w}: aide --init cold " + ", ".join(f"{x:.2f}" for x in inits) +
                  " s; aide --check warm " + ", ".join(f"{x:.2f}" for x in checks) + " s", flush=True)
        best = min(sweep_init, key=lambda w: statistics.median(sweep_init[w]))
        best_check = min(sweep_check, key=lambda w: statistics.median(sweep_check[w]))
        conf = aide_conf(tmp, a.path, best)
        conf_check = aide_conf(tmp, a.path, best_check)
        print(f"fastest: --init num_workers={best} (median {statistics.median(sweep_init[best]):.2f} s), "
              f"--check num_workers={best_check} (median {statistics.median(sweep_check[best_check]):.2f} s); "
              f"used below\n", flush=True)

        if a.rounds == 0:
            return
        manifest = os.path.join(tmp, "files.manifest")
        names = ["cold read", "aide --init (cold)", "ours: initial manifest (cold)", "aide --check (warm)",
                 "ours: full verification (warm)", "ours: routine check (warm)"]
        rows = []
        for r in range(a.rounds):
            res = {}
            drop_caches()
            res[names[0]] = run(f"find {a.path} -xdev -type f -print0 | xargs -0 -P4 -n 64 cat > /dev/null",
                                shell=True)

            def aide_side():
                drop_caches()
                res[names[1]] = run(["aide", "-c", conf, "--init"])
                os.replace(os.path.join(tmp, "aide.db.new"), os.path.join(tmp, "aide.db"))
                res[names[3]] = run(["aide", "-c", conf_check, "--check"])

            def our_side():
                drop_caches()
                res[names[2]] = run([fim, "init", manifest, a.path], stdout=subprocess.PIPE)
                res[names[4]] = run([fim, "rehash", manifest, a.path], stdout=subprocess.PIPE)
                res[names[5]] = run([fim, "check", manifest, a.path], stdout=subprocess.PIPE)

            first = "aide" if r % 2 == 0 else "ours"
            for side in ((aide_side, our_side) if r % 2 == 0 else (our_side, aide_side)):
                side()
            rows.append(res)
            print(f"round {r + 1} ({first} first): " +
                  "; ".join(f"{k} {v[0]:.2f} s" for k, v in res.items()), flush=True)

        print(f"\n{a.rounds} rounds, alternating; AIDE num_workers={best} for --init, {best_check} for --check")
        print(f"{'':34} {'wall s median':>14} {'min':>7} {'max':>7} {'CPU s':>7} {'RSS MiB':>8}")
        for k in names:
            med, lo, hi = spread([row[k][0] for row in rows])
            cpu = statistics.median(row[k][1] for row in rows)
            rss = statistics.median(row[k][2] for row in rows)
            print(f"{k:34} {med:14.2f} {lo:7.2f} {hi:7.2f} {cpu:7.2f} {rss:8.1f}")

        def ratio(what, num, den, i=0, target=""):
            med, lo, hi = spread([row[num][i] / row[den][i] for row in rows])
            print(f"{what:48} {med:6.3f}x (min {lo:.3f}x, max {hi:.3f}x) {target}")

        print()
        ratio("initial manifest / aide --init (wall)", names[2], names[1], target="target <= 0.35x")
        ratio("initial manifest / cold read (wall)", names[2], names[0], target="target <= 1.2x")
        ratio("full verification / aide --check (wall)", names[4], names[3], target="target <= 0.2x")
        ratio("routine check / aide --check (wall)", names[5], names[3], target="target <= 0.05x")
        ratio("peak RSS, initial manifest / aide --init", names[2], names[1], i=2, target="target <= 0.25x")
        print(f"inotify watches: one per watched directory: {dirs} here (agent/src/files/watch.rs)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
