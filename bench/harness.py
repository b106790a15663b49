"""Shared by the benchmark scripts: a collector and an agent from target/release, each in a
temporary directory, on loopback; the machine's load from hostload.py; CPU and memory of a pid.
Nothing here reaches outside this machine, and everything started is stopped on exit."""
import atexit, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# HW_TARGET: another build's binaries (an older commit's, for a side-by-side comparison).
TARGET = os.environ.get("HW_TARGET") or os.path.join(ROOT, "target", "release")
HOSTLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostload.py")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_started = []


def _stop_all():
    # Each was started in a session of its own: the signal reaches what it started too (the agent
    # under a profiler, hostload's children).
    for p in reversed(_started):
        stop(p)


atexit.register(_stop_all)

# Temporary directories the scripts made (a collector's store of 5,000 hosts is gigabytes): gone
# at exit, after what used them stopped. Left behind, a dozen runs filled the disk and the last
# run measured a collector refusing reports for want of space.
_made = []


def _remove_made():
    _stop_all()
    for d in _made:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_remove_made)


def binary(name, target=None):
    path = os.path.join(target or TARGET, name)
    if not os.path.exists(path):
        sys.exit(f"{path} missing: run `cargo build --release` first")
    return path


def start(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    _started.append(p)
    return p


def stop(p):
    """Stops one process `start` started (and what it started), before the script's end. Under
    a profiler (`wrapped`), only the program is signalled and the profiler given time to write
    its file: a signal to the whole group would end the profiler first, with nothing written."""
    if p.poll() is None:
        inner = getattr(p, "inner_pid", None)
        if inner:
            os.kill(inner, signal.SIGTERM)
        else:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=600 if inner else 15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wrapped(p, exe):
    """The pid running `exe`: `p`'s own, or under a wrapper that does not exec (heaptrack) its
    first descendant that does, which `stop` then signals alone."""
    pid = own_pid(p.pid, os.path.realpath(exe))
    if pid != p.pid:
        p.inner_pid = pid
    return pid


def own_pid(root, exe):
    """`root` if it runs `exe`, else its first descendant that does (a wrapper's child)."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == exe:
                return pid
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    sys.exit(f"no process under pid {root} runs {exe}")


class Collector:
    def __init__(self, extra="", data=None, target=None, wrap=()):
        """A collector; `extra` is appended to its server.toml; `data`: its data directory (kept
        across runs, or shared by collectors on one PostgreSQL: the first writes the credentials
        there; default a new temporary one); `target`: the build directory its binary comes from
        (default TARGET); `wrap`: a command it runs under (`taskset -c 0`, which execs it,
        or a profiler that starts it as a child: `pid` is the collector's own either way)."""
        self.dir = tempfile.mkdtemp(prefix="hw-bench-")
        _made.append(self.dir)
        data = data or os.path.join(self.dir, "server")
        config = os.path.join(self.dir, "server.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\n{extra}')
        self.proc = start([*wrap, binary("hostwatch", target), "serve", "--config", config],
                          env={"HOSTWATCH_LOG": "warn,hostwatch_server=info"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stderr:
                m = re.search(r"listening on (https?://\S+)", line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()
        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            sys.exit("the collector did not start")
        self.pid = wrapped(self.proc, binary("hostwatch", target))
        self.token = open(os.path.join(data, "admin-token")).read().strip()
        self.secret_file = os.path.join(data, "enroll-secret")

    def cli(self, *args):
        env = {"HOSTWATCH_SERVER": self.url, "HOSTWATCH_TOKEN": self.token}
        out = subprocess.run([binary("hostwatch"), *args, "--output", "json"], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def start_agent(self, tag, **env):
        """The agent with the environment its systemd unit gives it, and `env` over that."""
        state = tempfile.mkdtemp(prefix="hw-bench-agent-")
        _made.append(state)
        config = os.path.join(state, "agent.toml")
        open(config, "w").close()
        base = {"HOSTWATCH_SERVER": self.url, "HOSTWATCH_ENROLL_SECRET_FILE": self.secret_file,
                "HOSTWATCH_STATE_DIR": state, "HOSTWATCH_TAGS": f"bench={tag}",
                "HOSTWATCH_CLOUD_PROVIDER": "none", "HOSTWATCH_LOG": "warn"}
        base.update(unit_environment())
        base.update(env)
        # HW_AGENT_WRAP runs the agent under a profiler, e.g. "heaptrack -o /tmp/agent" (its CPU
        # and memory figures are then the wrapper's).
        wrap = os.environ.get("HW_AGENT_WRAP", "").split()
        # HW_AGENT_LOG=FILE: the agent's log (at debug for the agent) appended to FILE, for an
        # investigation; its own CPU is then no longer the quiet agent's.
        log = os.environ.get("HW_AGENT_LOG")
        if log:
            base["HOSTWATCH_LOG"] = "info,hostwatch_agent=debug"
        agent = start([*wrap, binary("hostwatch-agent"), "--config", config], env={**os.environ, **base} if wrap else base,
                      stdout=subprocess.DEVNULL, stderr=open(log, "a") if log else subprocess.DEVNULL)
        if wrap:
            wrapped(agent, binary("hostwatch-agent"))  # so that `stop` lets the profiler write
        deadline = time.time() + 60
        while True:
            hosts = [h for h in self.cli("hosts") if h["tags"].get("bench") == tag and h["status"] == "online"]
            if hosts:
                return agent, hosts[0]["id"]
            if time.time() > deadline:
                sys.exit("the agent never came online")
            time.sleep(0.3)


def unit_environment():
    """The Environment= settings of the agent's systemd unit, so the agent runs as installed."""
    unit = os.path.join(ROOT, "packaging", "systemd", "hostwatch-agent.service")
    env = {}
    for line in open(unit):
        if line.startswith("Environment="):
            k, v = line.strip().split("=", 2)[1:]
            env[k] = v
    return env


def load(procs, conns, seconds):
    """hostload.py, ready: N sleeping processes and M established loopback connections."""
    p = start([sys.executable, HOSTLOAD, "--procs", str(procs), "--conns", str(conns), "--seconds", str(seconds)],
              stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready"):
        sys.exit(f"hostload.py did not get ready: {line!r}")
    return p


def usage(pid):
    """CPU seconds used so far and resident bytes now, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    return cpu, int(fields[21]) * PAGE


class Postgres:
    """A private PostgreSQL 15 cluster (Debian's postgresql-15) in a temporary directory, on a
    Unix socket only (no TCP port), as the tests start one, with the settings a fleet's database
    would have rather than the packaged defaults: shared_buffers 1 GB, 200 connections; durability
    as shipped (fsync and synchronous_commit on). Stopped and removed at exit."""
    BIN = "/usr/lib/postgresql/15/bin"

    def __init__(self, keep=None):
        """`keep`: a directory the cluster stays in across runs (made at the first); default a
        new temporary one, removed at exit."""
        import pwd
        if not os.path.exists(os.path.join(self.BIN, "initdb")):
            sys.exit("PostgreSQL 15 missing: apt install postgresql-15")
        pw = pwd.getpwnam("postgres")
        if keep:
            os.makedirs(keep, exist_ok=True)
            self.dir = keep
        else:
            self.dir = tempfile.mkdtemp(prefix="hw-bench-pg-")
            _made.append(self.dir)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        fresh = not os.path.exists(self.data)
        if fresh:
            self._as_postgres([os.path.join(self.BIN, "initdb"), "-D", self.data, "-U", "hostwatch",
                               "--auth=trust", "--encoding=UTF8", "--no-sync"])
        options = (f"-c listen_addresses='' -k {self.dir} -c shared_buffers=1GB -c max_connections=200"
                   + (" -c shared_preload_libraries=pg_stat_statements" if os.environ.get("HW_PG_STATEMENTS") else ""))
        self._as_postgres([os.path.join(self.BIN, "pg_ctl"), "-D", self.data, "-l",
                           os.path.join(self.dir, "server.log"), "-o", options, "-w", "start"])
        atexit.register(self.stop)
        if fresh:
            self.psql("postgres", "CREATE DATABASE hw")
        self.url = f"postgres://hostwatch@/hw?host={self.dir}"

    def psql(self, database, sql):
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-h", self.dir, "-U", "hostwatch", "-d", database,
                              "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def _as_postgres(self, argv):
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.BIN, "pg_ctl"), "-D", self.data,
                            "-m", "fast", "-w", "stop"], capture_output=True)

    def cpu(self):
        """CPU seconds the server has used so far: the postmaster, its live children, and the
        children it reaped (a connection that ended)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            master = int(f.readline())
        total = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(pid) == master:
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS
            elif int(fields[1]) == master:
                total += (int(fields[11]) + int(fields[12])) / TICKS
        return total

    def counters(self):
        """The database's transactions committed and rows written so far (pg_stat_database)."""
        out = self.psql("hw", "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                              "WHERE datname = 'hw'")
        commits, rows = out.split("|")
        return int(commits), int(rows)

    def size_mib(self):
        return int(self.psql("hw", "SELECT pg_database_size('hw')")) / (1 << 20)
