#!/usr/bin/env python3
"""File integrity side by side with AIDE over one tree (default /usr), as the file-integrity issue
asks: AIDE 0.18 with sha256 as its only hash and num_workers=2, against the agent's file monitor
(agent/benches/fim.rs: the same scan code, the byte budget lifted).

  cold read     every regular file read once, 4 at a time, page cache dropped first (the limit)
  aide --init   page cache dropped first;   ours: the initial manifest, cold the same way
  aide --check  warm (right after --init);  ours: full verification re-hashing everything, warm,
                                            and the routine check trusting (inode, size, mtime,
                                            ctime), warm

Wall time, CPU and peak RSS of each, by wait4. Drops the page cache (root; it slows the machine
for a while); run it on a quiet machine. Usage: python3 bench/fim_vs_aide.py [--path /usr]
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(argv, shell=False, stdout=subprocess.DEVNULL):
    """Wall seconds, CPU seconds, peak RSS (MiB) and stdout of one command, by wait4."""
    start = time.monotonic()
    p = subprocess.Popen(argv, shell=shell, stdout=stdout, stderr=subprocess.PIPE)
    out = p.stdout.read() if stdout == subprocess.PIPE else b""
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    # aide exits 1..7 when it finds differences.
    if code != 0 and not (isinstance(argv, list) and "aide" in argv[0] and code < 8):
        sys.exit(f"{argv}: exit {code}: {err.decode(errors='replace')[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="/usr")
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
    tmp = tempfile.mkdtemp(prefix="hw-fim-")
    conf = os.path.join(tmp, "aide.conf")
    with open(conf, "w") as f:
        f.write(f"database_in=file:{tmp}/aide.db\ndatabase_out=file:{tmp}/aide.db.new\ngzip_dbout=no\n"
                f"num_workers=2\nreport_url=file:/dev/null\n"
                f"Rule = p+i+n+u+g+s+m+c+sha256+ftype+l\n{a.path} Rule\n")
    manifest = os.path.join(tmp, "files.manifest")
    files = int(subprocess.run(f"find {a.path} -xdev -type f | wc -l", shell=True, capture_output=True,
                               text=True).stdout)
    dirs = int(subprocess.run(f"find {a.path} -xdev -type d | wc -l", shell=True, capture_output=True,
                              text=True).stdout)
    size = int(subprocess.run(["du", "-sxb", a.path], capture_output=True, text=True).stdout.split()[0])
    print(f"tree {a.path}: {files} files, {dirs} directories, {size / 1e9:.2f} GB")
    r = {}
    drop_caches()
    r["cold read"] = run(f"find {a.path} -xdev -type f -print0 | xargs -0 -P4 -n 64 cat > /dev/null", shell=True)
    drop_caches()
    r["aide --init (cold)"] = run(["aide", "-c", conf, "--init"])
    os.replace(os.path.join(tmp, "aide.db.new"), os.path.join(tmp, "aide.db"))
    drop_caches()
    r["ours: initial manifest (cold)"] = run([fim, "init", manifest, a.path], stdout=subprocess.PIPE)
    r["aide --check (warm)"] = run(["aide", "-c", conf, "--check"])
    r["ours: full verification, re-hashing (warm)"] = run([fim, "rehash", manifest, a.path], stdout=subprocess.PIPE)
    r["ours: routine check (warm)"] = run([fim, "check", manifest, a.path], stdout=subprocess.PIPE)
    print(f"{'':45} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8}")
    for k, (wall, cpu, rss, out) in r.items():
        print(f"{k:45} {wall:8.2f} {cpu:8.2f} {rss:8.1f}")
        if out:
            print(f"{'':45} {out.decode().strip()}")
    init, check = r["aide --init (cold)"], r["aide --check (warm)"]
    ours_init = r["ours: initial manifest (cold)"]
    print(f"initial manifest / aide --init (wall)       {ours_init[0] / init[0]:.2f}x  (target <= 0.35x)")
    print(f"initial manifest / cold read (wall)         {ours_init[0] / r['cold read'][0]:.2f}x  (target <= 1.2x)")
    print(f"full verification / aide --check (wall)     {r['ours: full verification, re-hashing (warm)'][0] / check[0]:.3f}x  (target <= 0.2x)")
    print(f"routine check / aide --check (wall)         {r['ours: routine check (warm)'][0] / check[0]:.3f}x  (target <= 0.05x)")
    print(f"memory during the manifest / aide's peak    {ours_init[2] / init[2]:.2f}x  (target <= 0.25x)")
    print(f"inotify watches: one per watched directory: {dirs} here (agent/src/files/watch.rs)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
