#!/usr/bin/env python3
"""Every exec judged, on the collector: the time from an exec to its finding (p50, p99 over
--samples programs, each new to the host's baseline and living 20 ms), and the collector's CPU per
1,000 judged exec events, for distinct programs (each opens a finding) and for runs of one program
(each counts an occurrence of one finding). Release build; the agent at its default 10 s interval
(an exec is reported within a second whatever the interval).

Usage: cargo build --release && python3 bench/exec_judgement.py [--samples 120] [--events 5000]
       [--ancestor-rules N]
With --ancestor-rules, the baseline holds N process rules that match every program by name and
exe but name an ancestor none has (`ancestor = "no-such-ancestor-I*"`): each judged exec walks
its ancestry (name and exe of each ancestor) once per rule and is still unexplained, the worst
case of what ancestor rules cost.
Prints every sample's latency, then the summary. The collector's budget of new findings is lifted
(`[findings] max_new_per_host_per_minute`): this measures judging, not holding back.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def findings(c, host):
    req = urllib.request.Request(f"{c.url}/api/v1/findings?host={host}&kind=unexpected_process&status=all",
                                 headers={"Authorization": f"Bearer {c.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_until(what, f, timeout, poll=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(poll)


def burst(program, n, parallel=20):
    """Runs `program` n times (with `$i`, 0 to n-1, in it), 20 ms each, `parallel` at a time."""
    script = (f"i=0; while [ $i -lt {n} ]; do {program} 0.02 & i=$((i+1)); "
              f"[ $((i % {parallel})) -eq 0 ] && wait; done; wait")
    subprocess.run(["sh", "-c", script], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--ancestor-rules", type=int, default=0)
    a = ap.parse_args()
    c = harness.Collector("[findings]\nmax_new_per_host_per_minute = 1000000\n")
    tag = "judge"
    baseline = os.path.join(c.dir, "judge.toml")
    with open(baseline, "w") as f:
        f.write(f'name = "judge"\nselector = {{ bench = "{tag}" }}\n')
        for i in range(a.ancestor_rules):
            f.write(f'[[process]]\nname = "*"\nexe = "/*"\nancestor = "no-such-ancestor-{i}*"\n')
    c.cli("baseline", "apply", baseline)
    _agent, host = c.start_agent(tag)
    time.sleep(5)  # what the host already runs opens first
    work = tempfile.mkdtemp(prefix="hw-bench-judge-", dir="/run")
    try:
        one = os.path.join(work, "prog")
        shutil.copy("/bin/sleep", one)
        os.chmod(one, 0o755)

        # Latency: one new program at a time, from its exec to its finding in the API.
        lat = []
        for i in range(a.samples):
            p = os.path.join(work, f"lat-{i}")
            os.link(one, p)
            t0 = time.monotonic()
            subprocess.run([p, "0.02"], check=True)
            wait_until(f"the finding on {p}", lambda: any(f["subject"] == p for f in findings(c, host)), 30)
            lat.append(time.monotonic() - t0)
        q = statistics.quantiles(lat, n=100)
        print("exec -> finding, s:", " ".join(f"{x:.3f}" for x in lat))

        def judged(prefix):
            return sum(f["occurrences"] for f in findings(c, host) if f["subject"].startswith(prefix))

        # CPU: distinct programs, then runs of one.
        results = []
        for kind in ("distinct", "one program"):
            if kind == "distinct":
                prefix = os.path.join(work, "d-")
                for i in range(a.events):
                    os.link(one, f"{prefix}{i}")
                program = prefix + "$i"
            else:
                prefix = program = os.path.join(work, "same")
                os.link(one, program)
            cpu0, _ = harness.usage(c.pid)
            t0 = time.monotonic()
            burst(program, a.events)
            # Polled once a second, so that the API's own cost stays small beside what is measured.
            wait_until("every run judged", lambda: judged(prefix) >= a.events * 0.99, 120, poll=1)
            # Settled: nothing more to judge.
            time.sleep(2)
            n = judged(prefix)
            cpu1, _ = harness.usage(c.pid)
            results.append((kind, n, cpu1 - cpu0, time.monotonic() - t0))
        print(f"exec -> finding over {len(lat)} samples: p50 {statistics.median(lat):.3f} s, p99 {q[98]:.3f} s, "
              f"min {min(lat):.3f} s, max {max(lat):.3f} s")
        print(f"ancestor rules: {a.ancestor_rules}")
        for kind, n, cpu, wall in results:
            print(f"collector CPU, {kind}: {n} execs judged in {wall:.1f} s, {cpu:.2f} s CPU, "
                  f"{cpu / n * 1000 * 1000:.1f} ms per 1,000 (receiving, decoding, recording and judging)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
