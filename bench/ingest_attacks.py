#!/usr/bin/env python3
"""Issue 11's figures: what the attacks of "Why" cost 20 well-behaved agents and the collector.

A release collector and 20 real agents on loopback, reporting every 2 s. First a quiet minute
(the idle figures), then each attack for a minute with 20 s between, while a sampler reads the
collector every 0.5 s: its RSS, /metrics, and every host's last_seen. Per phase it prints:
  - reports accepted from the 20 agents against the ones due (20 / 2 s), and how many were
    refused (429 throttled, 503 busy) or never got a connection;
  - the longest any agent went without a report accepted (its staleness), the mean of those;
  - the collector's RSS: max during the phase against the idle median;
  - at the end, data_lost findings (a report an agent had to drop): must be none.

Attacks (each from this script, on loopback, bounded in time):
  slow-body    16 connections under 4 node keys sending report bodies at 1 byte a second,
               reconnecting as they are cut
  header-flood 1,000 connections each sending an unfinished 380 KB header line, reconnecting
  conn-flood   as many idle connections as the cap allows and more (5,000), reconnecting
  gzip-bomb    8 senders posting a 40 KB gzip body that inflates to 512 MiB, in a loop
  enroll-flood 8 senders posting enrollments with the right secret, in a loop
  bad-numbers  8 senders posting reports with rss_bytes past i64, in a loop

Usage: cargo build --release && python3 bench/ingest_attacks.py [--seconds 60] [--only NAME]
"""
import argparse, gzip, json, os, resource, socket, statistics, sys, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

AGENTS = 20
INTERVAL = 2.0
# The socket-level attacks come from an address of their own, as an attacker's machine would: on
# one loopback address their churn would use up the ephemeral ports the agents connect from.
ATTACKER = ("127.0.0.2", 0)


def http(method, url, body=None, token=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def enroll(c, name):
    secret = open(c.secret_file).read().strip()
    body = json.dumps({
        "enroll_secret": secret,
        "host": {"hostname": name, "machine_id": f"attacker-{name}", "os": "", "kernel": "", "arch": "",
                 "tags": {"bench": "attacker"}},
        "agent": {"version": "0.0.1", "interval_secs": 10, "started_at": "2026-01-01T00:00:00Z",
                  "coverage": {"state": "full"}},
    }).encode()
    code, out = http("POST", c.url + "/api/v1/enroll", body)
    if code != 200:
        sys.exit(f"cannot enroll an attacker host: {code} {out[:200]!r}")
    return json.loads(out)["node_key"], body


def addr(c):
    host, port = c.url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def report_body(seq, rss=1):
    return json.dumps({
        "session": 7, "seq": seq, "sent_at": "2026-01-01T00:00:00Z",
        "host": {"hostname": "attacker", "machine_id": "attacker", "os": "", "kernel": "", "arch": ""},
        "agent": {"version": "0.0.1", "interval_secs": 10, "started_at": "2026-01-01T00:00:00Z",
                  "coverage": {"state": "full"}},
        "snapshot": {"taken_at": "2026-01-01T00:00:00Z", "processes": [{
            "pid": 1, "ppid": 0, "name": "x", "exe": "/x", "cmdline": ["x"], "uid": 0,
            "start_time": "2026-01-01T00:00:00Z", "rss_bytes": rss}], "listeners": []},
    }).encode()


# ---- attacks: each runs until `stop` is set ----

def slow_body(c, stop, keys):
    host, port = addr(c)

    def one(key):
        while not stop.is_set():
            try:
                s = socket.create_connection((host, port), timeout=5, source_address=ATTACKER)
                s.sendall((f"POST /api/v1/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                           "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n").encode())
                while not stop.is_set():
                    s.sendall(b" ")
                    time.sleep(1)
            except OSError:
                time.sleep(0.2)
            finally:
                try:
                    s.close()
                except Exception:
                    pass
    threads = [threading.Thread(target=one, args=(keys[i % len(keys)],), daemon=True) for i in range(16)]
    return threads


def flood(c, stop, n, payload):
    """n connections kept open (reopened as they are closed), each sending `payload` slowly."""
    host, port = addr(c)

    def loop():
        socks = []
        while not stop.is_set():
            while len(socks) < n and not stop.is_set():
                try:
                    s = socket.create_connection((host, port), timeout=2, source_address=ATTACKER)
                    s.setblocking(False)
                    socks.append([s, 0])
                except OSError:
                    time.sleep(0.05)
                    break
            alive = []
            for s, sent in socks:
                try:
                    if payload and sent < len(payload):
                        sent += s.send(payload[sent:sent + 65536])
                    else:
                        if s.recv(65536) == b"":
                            raise OSError("closed")
                    alive.append([s, sent])
                except BlockingIOError:
                    alive.append([s, sent])
                except OSError:
                    s.close()
            socks = alive
            time.sleep(0.05)
        for s, _ in socks:
            s.close()
    return [threading.Thread(target=loop, daemon=True)]


def senders(stop, n, fn):
    def loop(i):
        while not stop.is_set():
            fn(i)
    return [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]


def attacks(c, keys, enroll_body):
    bomb = gzip.compress(b"\0" * (512 << 20), compresslevel=9)
    head = b"POST /api/v1/report HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (380 << 10)
    seq = [1000]

    def bad(i):
        seq[0] += 1
        http("POST", c.url + "/api/v1/report", report_body(seq[0], rss=2**64 - 1), token=keys[i % len(keys)])

    return {
        "slow-body": lambda stop: slow_body(c, stop, keys),
        "header-flood": lambda stop: flood(c, stop, 1000, head),
        "conn-flood": lambda stop: flood(c, stop, 5000, b""),
        "gzip-bomb": lambda stop: senders(stop, 8, lambda i: http(
            "POST", c.url + "/api/v1/report", bomb, token=keys[i % len(keys)],
            headers={"content-encoding": "gzip"}, timeout=30)),
        "enroll-flood": lambda stop: senders(stop, 8, lambda i: http("POST", c.url + "/api/v1/enroll", enroll_body)),
        "bad-numbers": lambda stop: senders(stop, 8, bad),
    }


# ---- measuring ----

def metrics(c):
    code, text = http("GET", c.url + "/metrics", token=c.token)
    out = {}
    for line in text.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def hosts(c, ids):
    code, body = http("GET", c.url + "/api/v1/hosts", token=c.token)
    if code != 200:
        return {}
    return {h["id"]: h for h in json.loads(body) if h["id"] in ids}


def parse_ts(s):
    import datetime
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def phase(c, name, seconds, ids, pid, start_attack=None):
    stop = threading.Event()
    threads = start_attack(stop) if start_attack else []
    for t in threads:
        t.start()
    m0 = metrics(c)
    rss, stale_max = [], {i: 0.0 for i in ids}
    t_end = time.time() + seconds
    while time.time() < t_end:
        _, r = harness.usage(pid)
        rss.append(r)
        now = time.time()
        for i, h in hosts(c, ids).items():
            if h.get("last_seen"):
                stale_max[i] = max(stale_max[i], now - parse_ts(h["last_seen"]))
        time.sleep(0.5)
    stop.set()
    m1 = metrics(c)
    for t in threads:
        t.join(timeout=10)
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    return {
        "phase": name,
        "agents_accepted": None,
        "accepted_total": d('hostwatch_reports_total{outcome="accepted"}'),
        "rejected": sum(d(f'hostwatch_reports_total{{outcome="{o}"}}') for o in ("invalid", "unauthorized", "too_slow", "too_large", "failed")),
        "throttled": d('hostwatch_reports_total{outcome="throttled"}'),
        "busy": d('hostwatch_reports_total{outcome="busy"}'),
        "conns_refused": d("hostwatch_connections_refused_total"),
        "per_address_refused": d("hostwatch_connections_refused_per_address_total"),
        "enroll_throttled": d('hostwatch_enrollments_total{outcome="throttled"}'),
        "stale_max": max(stale_max.values()),
        "stale_mean_of_max": statistics.mean(stale_max.values()),
        "rss_max": max(rss),
        "rss_median": statistics.median(rss),
    }


def seqs(c, ids):
    """Every host's last sequence number; asked again (for up to 60 s) while the collector is
    still shedding an attack's connections."""
    out = {}
    deadline = time.time() + 60
    while len(out) < len(ids):
        for i in ids:
            if i not in out:
                code, body = http("GET", f"{c.url}/api/v1/hosts/{i}", token=c.token)
                if code == 200:
                    out[i] = json.loads(body)["last_seq"]
        if len(out) < len(ids):
            if time.time() > deadline:
                sys.exit(f"the collector did not answer for hosts {sorted(set(ids) - set(out))} within 60 s")
            time.sleep(0.5)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # All 20 agents and the attacker share 127.0.0.1, as a fleet behind one NAT address does: the
    # enrollment rate per address is raised as docs/configuration.md advises for that case.
    c = harness.Collector("[limits]\nenrollments_per_address_per_minute = 600\n")
    pid = c.pid
    ids = []
    for n in range(AGENTS):
        _, host_id = c.start_agent(f"good{n}", HOSTWATCH_INTERVAL=f"{INTERVAL:g}s", HOSTWATCH_FILES_DEFAULTS="false")
        ids.append(host_id)
    keys = [enroll(c, f"attacker{i}")[0] for i in range(4)]
    _, enroll_body = enroll(c, "attacker-enroll")
    time.sleep(10)
    plan = attacks(c, keys, enroll_body)
    names = a.only or list(plan)
    results = []
    s0 = seqs(c, ids)
    idle = phase(c, "idle", a.seconds, ids, pid)
    time.sleep(INTERVAL * 2)
    s1 = seqs(c, ids)
    idle["agents_accepted"] = sum(s1[i] - s0[i] for i in ids)
    results.append(idle)
    for name in names:
        time.sleep(20)
        s0 = seqs(c, ids)
        r = phase(c, name, a.seconds, ids, pid, plan[name])
        time.sleep(INTERVAL * 2)  # what the attack held back, delivered
        s1 = seqs(c, ids)
        r["agents_accepted"] = sum(s1[i] - s0[i] for i in ids)
        results.append(r)
        print(json.dumps(r), flush=True)
    lost = sum(1 for i in ids for f in c.cli("findings", "--host", str(i), "--kind", "data_lost", "--status", "all"))
    due = AGENTS * a.seconds / INTERVAL
    base = idle["rss_median"]
    print(f"\n{AGENTS} agents every {INTERVAL:g} s, {a.seconds} s per phase; reports due per phase about {due:.0f}")
    print(f"{'phase':13} {'agents sent':>11} {'of due':>7} {'throttled':>9} {'busy':>5} {'conns refused':>13} {'per address':>11} "
          f"{'enroll 429':>10} {'stale max s':>11} {'stale mean s':>12} {'RSS max MiB':>11} {'over idle MiB':>13}")
    for r in results:
        print(f"{r['phase']:13} {r['agents_accepted']:>11.0f} {r['agents_accepted'] / due:>7.2f} {r['throttled']:>9.0f} "
              f"{r['busy']:>5.0f} {r['conns_refused']:>13.0f} {r['per_address_refused']:>11.0f} {r['enroll_throttled']:>10.0f} {r['stale_max']:>11.1f} {r['stale_mean_of_max']:>12.1f} "
              f"{r['rss_max'] / 2**20:>11.1f} {(r['rss_max'] - base) / 2**20:>13.1f}")
    print(f"data_lost findings on the 20 agents' hosts: {lost}")


if __name__ == "__main__":
    main()
