//! Running the real binaries: a collector on a free loopback port, agents configured by
//! environment, the CLI, and helpers that wait on conditions with a bounded timeout.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test (target/debug):
//! the agent's and the server's own integration tests make cargo build them first.

#![allow(dead_code)]

pub mod netns;
pub mod postgres;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;

/// How often conditions are polled: well under the agents' 1 s interval used in tests.
pub const POLL: Duration = Duration::from_millis(200);

/// The path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace`, which builds the binaries",
        path.display()
    );
    path
}

/// Copies the program `from` to `to` (executable) by `cp`, never by this process: a file this
/// multi-threaded process held open for writing would be inherited by any child another test
/// forked meanwhile, until that child's exec, and running the copy then fails with "Text file
/// busy" (ETXTBSY; seen in CI).
pub fn copy_program(from: impl AsRef<Path>, to: impl AsRef<Path>) {
    let (from, to) = (from.as_ref(), to.as_ref());
    let status = Command::new("cp").arg("--").arg(from).arg(to).status().expect("cp runs");
    assert!(status.success(), "cp {} {}: {status}", from.display(), to.display());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A name unique to this test run, short enough for a process name (15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{:x}{n}", std::process::id() % 0xffff)
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {within:?} of SIGTERM",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command for an outside program the tests need, or a panic naming the Debian package that
/// has it: a machine without it fails at once with the fix, not later with "No such file".
pub fn tool(program: &str) -> Command {
    let package = match program {
        "dpkg-deb" | "dpkg" => "dpkg",
        "rpm" | "rpmbuild" => "rpm",
        "ip" | "ss" => "iproute2",
        "ps" | "pgrep" => "procps",
        "psql" | "pg_dump" => "postgresql-client-15",
        "setpriv" => "util-linux",
        other => other,
    };
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH: the tests need Debian's `{package}` package (README.md, \"Tests\"; .ci/run installs what they need)"
    );
    Command::new(program)
}

/// Polls `f` every [`POLL`] until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Tests share this machine: every collector holds a shared turn for its life; a test that needs
/// the machine to itself (nothing else starting processes or sockets, as learning a baseline
/// from it and expecting zero findings does) takes the whole of it. A shared turn waits only
/// for a test that is alone; the one that wants to be alone waits for every shared turn to end
/// (at worst until the other tests are done). No test waits on itself, so none deadlocks.
static MACHINE: (Mutex<(usize, bool)>, std::sync::Condvar) =
    (Mutex::new((0, false)), std::sync::Condvar::new());

/// A test's turn on the machine, given back when dropped.
pub struct Turn {
    alone: bool,
}

impl Turn {
    /// A shared turn, for a test that starts processes or sockets without a collector of its
    /// own: whatever it starts is news to every host watching this machine, so it waits for a test
    /// that has the machine to itself.
    pub fn shared() -> Turn {
        Turn::take(false)
    }

    /// The machine to this test alone.
    pub fn alone() -> Turn {
        Turn::take(true)
    }

    fn take(alone: bool) -> Turn {
        outside_login();
        let (lock, cv) = &MACHINE;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if alone {
            while s.0 > 0 || s.1 {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.1 = true;
        } else {
            while s.1 {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.0 += 1;
        }
        Turn { alone }
    }
}

/// What a test starts must belong to no login session, or the collector judges it as that
/// session's rather than one program at a time: a test run from an ssh shell leaves the session
/// for its thread (root may, unless the kernel holds login uids immutable).
fn outside_login() {
    const UNSET: &str = "4294967295";
    let path = "/proc/thread-self/loginuid";
    let Ok(uid) = std::fs::read_to_string(path) else { return };
    if uid.trim() == UNSET {
        return;
    }
    if let Err(e) = std::fs::write(path, UNSET) {
        panic!(
            "the tests run inside a login session (login uid {}) and cannot leave it ({e}): what they start would be judged as that session's. Run them outside a login: `systemd-run --pty --wait --same-dir cargo test ...`, or as CI does.",
            uid.trim()
        );
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (lock, cv) = &MACHINE;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.alone {
            s.1 = false;
        } else {
            s.0 -= 1;
        }
        cv.notify_all();
    }
}

/// The role analysts' SQL runs as on a test's PostgreSQL (`query_database`).
const QUERY_ROLE: &str = "hw_query";

tokio::task_local! {
    /// Set for a test run by [`on_postgres`]: its collectors keep their store in a private
    /// PostgreSQL rather than in SQLite in their data directories.
    static ON_POSTGRES: Arc<Mutex<Databases>>;
}

/// A test's PostgreSQL, started at its first collector, and a database for each collector's data
/// directory (a collector restarted on the same directory finds its store again).
#[derive(Default)]
struct Databases {
    server: Option<postgres::PgServer>,
    by_dir: Vec<(PathBuf, String)>,
    /// Where the server's cluster is made, if not in a temporary directory of its own.
    parent: Option<PathBuf>,
}

/// A collector's PostgreSQL database, as its test sees it.
struct Database {
    databases: Arc<Mutex<Databases>>,
    name: String,
}

impl Database {
    /// The database of the collector whose data lives in `data_dir`, when the test runs on
    /// PostgreSQL: made at first use, with the analysts' role on the cluster.
    fn for_dir(data_dir: &Path) -> Option<Database> {
        let databases = ON_POSTGRES.try_with(Arc::clone).ok()?;
        let mut d = databases.lock().unwrap_or_else(|e| e.into_inner());
        if d.server.is_none() {
            let server = match &d.parent {
                Some(parent) => postgres::PgServer::start_quiet_in(parent),
                None => postgres::PgServer::start_quiet(),
            };
            server.psql("postgres", &format!("CREATE ROLE {QUERY_ROLE} LOGIN"));
            d.server = Some(server);
        }
        let name = match d.by_dir.iter().find(|(dir, _)| dir == data_dir) {
            Some((_, name)) => name.clone(),
            None => {
                let name = format!("hw_{}", d.by_dir.len() + 1);
                if let Some(server) = &d.server {
                    server.psql("postgres", &format!("CREATE DATABASE {name}"));
                }
                d.by_dir.push((data_dir.to_owned(), name.clone()));
                name
            }
        };
        drop(d);
        Some(Database { databases, name })
    }

    fn with_server<T>(&self, f: impl FnOnce(&postgres::PgServer) -> T) -> T {
        let d = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        f(d.server.as_ref().expect("the test's PostgreSQL, started with its first collector"))
    }

    /// The lines of server.toml that put the store here.
    fn config(&self) -> String {
        self.with_server(|s| {
            let query = format!("postgres://{QUERY_ROLE}@/{}?host={}", self.name, s.socket_dir().display());
            format!("database = {:?}\nquery_database = {query:?}\n", s.url(&self.name))
        })
    }

    /// What the analysts' role reads, granted once the collector has made its views (as
    /// docs/scaling.md has the administrator do).
    fn grant_views(&self) {
        self.with_server(|s| {
            s.psql(
                &self.name,
                &format!(
                    "GRANT USAGE ON SCHEMA hostwatch_views TO {QUERY_ROLE}; \
                     GRANT SELECT ON ALL TABLES IN SCHEMA hostwatch_views TO {QUERY_ROLE}"
                ),
            )
        });
    }
}

/// Runs `test` with its collectors on PostgreSQL (a private server the test's first collector
/// starts, stopped when the test ends), where it would otherwise run on SQLite.
pub async fn on_postgres<F: Future>(test: F) -> F::Output {
    ON_POSTGRES.scope(Arc::new(Mutex::new(Databases::default())), test).await
}

/// The same, the server's cluster made in `parent` (a disk the test fills).
pub async fn on_postgres_in<F: Future>(parent: &Path, test: F) -> F::Output {
    let databases = Databases { parent: Some(parent.to_owned()), ..Databases::default() };
    ON_POSTGRES.scope(Arc::new(Mutex::new(databases)), test).await
}

/// Runs an end-to-end test on each store: `NAME::sqlite` and `NAME::postgres`. `NAME` is an
/// `async fn` of no arguments in the same module; the attributes (`#[tokio::test]` and its
/// flavour) are each run's.
macro_rules! on_both_stores {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            $(#[$attr])*
            async fn sqlite() {
                super::$name().await
            }

            $(#[$attr])*
            async fn postgres() {
                $crate::support::on_postgres(super::$name()).await
            }
        }
    };
}
pub(crate) use on_both_stores;

/// A collector started from `hostwatch serve --config`, on a free loopback port.
pub struct Collector {
    pub process: Guard,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub enroll_secret_file: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    /// On PostgreSQL: the store's database (the server outlives the collector).
    database: Option<Database>,
    // Dropped last: the collector and what the test started are gone first.
    _turn: Turn,
}

impl Collector {
    /// Starts a collector, once no other test's collector runs, and keeps every other test from
    /// starting one until it is dropped.
    pub fn start_alone(dir: &Path, extra: &str) -> Collector {
        let turn = Turn::take(true);
        Self::start_with(dir, extra, "127.0.0.1:0", turn)
    }

    /// Starts a collector whose data lives in `dir/server`; `extra` is appended to server.toml.
    pub fn start(dir: &Path, extra: &str) -> Collector {
        Self::start_on(dir, extra, 0)
    }

    /// The same, on a given port (0: any free one): a restarted collector keeps its address.
    pub fn start_on(dir: &Path, extra: &str, port: u16) -> Collector {
        Self::start_at(dir, extra, &format!("127.0.0.1:{port}"))
    }

    /// The same, listening on `addr`.
    pub fn start_at(dir: &Path, extra: &str, addr: &str) -> Collector {
        let turn = Turn::take(false);
        Self::start_with(dir, extra, addr, turn)
    }

    fn start_with(dir: &Path, extra: &str, addr: &str, turn: Turn) -> Collector {
        let data_dir = dir.join("server");
        let config = dir.join("server.toml");
        let database = Database::for_dir(&data_dir);
        let store = database.as_ref().map(Database::config).unwrap_or_default();
        std::fs::write(
            &config,
            format!("listen = {addr:?}\ndata_dir = {:?}\n{store}{extra}", data_dir.display().to_string()),
        )
        .expect("write server.toml");
        let mut child = Command::new(bin("hostwatch"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_clear()
            .env("HOSTWATCH_LOG", "info,hostwatch_server=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hostwatch serve");
        let stderr = child.stderr.take().expect("collector stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) =
                    line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next())
                {
                    let _ = tx.send(url.to_owned());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let process = Guard(child);
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => panic!(
                "collector did not report its address within 30 s; its log:\n{}",
                lines.lock().expect("log lock").join("\n")
            ),
        };
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in the collector's URL");
        let admin_token = std::fs::read_to_string(data_dir.join("admin-token"))
            .expect("admin-token written at first start")
            .trim()
            .to_owned();
        install_tls_provider();
        if let Some(d) = &database {
            d.grant_views();
        }
        Collector {
            process,
            url,
            port,
            enroll_secret_file: data_dir.join("enroll-secret"),
            data_dir,
            admin_token,
            stderr: lines,
            http: reqwest::Client::new(),
            database,
            _turn: turn,
        }
    }

    /// Runs the CLI against this collector with the admin token. A collector on another address
    /// than loopback (a network namespace's link) is plain http to "another machine": the CLI
    /// is told that is meant.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("hostwatch"));
        cmd.args(args)
            .env_clear()
            .env("HOSTWATCH_SERVER", &self.url)
            .env("HOSTWATCH_TOKEN", &self.admin_token);
        if !self.url.starts_with("http://127.0.0.1:") {
            cmd.env("HOSTWATCH_ALLOW_INSECURE_HTTP", "true");
        }
        cmd.output().expect("run hostwatch")
    }

    /// Runs the CLI against this collector with another token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("hostwatch"))
            .args(args)
            .env_clear()
            .env("HOSTWATCH_SERVER", &self.url)
            .env("HOSTWATCH_TOKEN", token)
            .output()
            .expect("run hostwatch")
    }

    /// Runs the CLI with `--output json` and parses stdout; panics with stderr on failure.
    pub fn cli_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        assert!(out.status.success(), "hostwatch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("hostwatch {args:?}: bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    pub fn findings(&self, host_id: i64, kind: &str, status: &str) -> Vec<proto::Finding> {
        self.cli_json(&["findings", "--host", &host_id.to_string(), "--kind", kind, "--status", status])
    }

    /// A raw POST, for tests of what the collector refuses.
    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Vec<u8>) -> (u16, String) {
        self.post_with(path, bearer, &[], body).await
    }

    /// The same, with more headers.
    pub async fn post_with(
        &self,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.expect("request to the collector");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// A GET with the admin token, parsed.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("JSON body")
    }

    /// The value of one counter or gauge in `/metrics`.
    /// `/metrics` as the collector serves it (with a token: it tells the fleet's findings).
    /// The host of the agent started with the tag `role=ROLE`, once it is online (it has
    /// reported).
    pub async fn online(&self, role: &str) -> proto::Host {
        wait_for(&format!("the host of role {role} online"), Duration::from_secs(60), async || {
            let hosts: Vec<proto::Host> = self.cli_json(&["hosts"]);
            hosts.into_iter().find(|h| {
                h.tags.get("role").map(String::as_str) == Some(role) && h.status == proto::HostStatus::Online
            })
        })
        .await
    }

    pub async fn metrics_text(&self) -> String {
        let resp = self
            .http
            .get(format!("{}{}", self.url, proto::METRICS_PATH))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        resp.text().await.expect("metrics text")
    }

    /// One sample of `/metrics`, named with its labels as the text writes them
    /// (`hostwatch_reports_total{outcome="accepted"}`); a sample not there is 0 for a labelled
    /// counter that has not counted yet, and a failure for anything else.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        let value = text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')));
        match value {
            Some(v) => v.parse().unwrap_or_else(|_| panic!("{name} is not a count: {v}")),
            None if name.contains('{')
                && text.contains(&format!("# TYPE {} ", &name[..name.find('{').unwrap_or(0)])) =>
            {
                0
            }
            None => panic!("{name} missing from:\n{text}"),
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("log lock").join("\n")
    }

    /// Waits until three more reports of `host` have been admitted: a host's reports are taken
    /// one at a time, each applied and judged before the next is admitted, so the two before the
    /// last are in. A positive mark before a check that nothing more came, read from the
    /// collector's log, so that the test starts no process and makes no connection of its own
    /// (either would be something new on the host).
    pub async fn more_reports_judged(&self, host: i64) {
        let mark = format!("host_id={host}");
        let admitted = || {
            let log = self.log();
            log.lines()
                .filter(|l| l.contains("report admitted") && l.split_whitespace().any(|t| t == mark))
                .count()
        };
        let from = admitted();
        wait_for("three more reports judged", Duration::from_secs(60), async || {
            (admitted() >= from + 3).then_some(())
        })
        .await;
    }

    /// Whether this collector's store is PostgreSQL (the test runs [`on_postgres`]).
    pub fn on_postgres(&self) -> bool {
        self.database.is_some()
    }

    /// Rows of one query on this collector's PostgreSQL database, through psql on the server's
    /// socket as its superuser (each field as psql prints it).
    pub fn store_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let d = self.database.as_ref().expect("a collector on PostgreSQL");
        let text = d.with_server(|s| s.psql_fields(&d.name, sql));
        text.lines().filter(|l| !l.is_empty()).map(|l| l.split('\t').map(str::to_owned).collect()).collect()
    }

    /// A psql session on this collector's PostgreSQL database, reading SQL from its stdin
    /// (piped, as its stdout is; tuples only, unaligned); it ends when its stdin closes.
    pub fn store_session(&self) -> Child {
        let d = self.database.as_ref().expect("a collector on PostgreSQL");
        d.with_server(|s| s.session(&d.name))
    }

    /// Rows of one read-only query on this collector's store, each field as text, without going
    /// through the collector: its SQLite file through python3's sqlite3 module (read-only), or
    /// its PostgreSQL database through psql. For checks of what the store itself holds.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        if self.database.is_some() {
            return self.store_rows(sql);
        }
        self.sqlite_rows("/usr/bin/python3", sql)
    }

    /// The same of the SQLite store, read by the interpreter `python` (a test that must run no
    /// program new to its host gives the one it already runs).
    pub fn sqlite_rows(&self, python: &str, sql: &str) -> Vec<Vec<String>> {
        let out = Command::new(python)
            .args([
                "-c",
                "import json, sqlite3, sys\n\
                 con = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
                 print(json.dumps([[str(x) for x in r] for r in con.execute(sys.argv[2])]))",
            ])
            .arg(self.data_dir.join("hostwatch.db"))
            .arg(sql)
            .output()
            .expect("python3 reads the SQLite store");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("rows as JSON")
    }

    /// Panics unless the store is whole: SQLite's `integrity_check` and `foreign_key_check`, or
    /// every B-tree index of PostgreSQL checked against its rules (amcheck's `bt_index_check`).
    pub fn check_store_integrity(&self) {
        if self.database.is_some() {
            self.store_rows("CREATE EXTENSION IF NOT EXISTS amcheck");
            let checked = self.store_rows(
                "SELECT count(bt_index_check(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relkind = 'i' \
                 AND c.relpersistence = 'p'",
            );
            let n: u64 = checked[0][0].parse().expect("a count");
            assert!(n > 10, "only {n} indexes checked");
        } else {
            assert_eq!(self.rows("PRAGMA integrity_check"), [["ok"]], "SQLite's integrity check");
            assert_eq!(self.rows("PRAGMA foreign_key_check"), Vec::<Vec<String>>::new(), "foreign keys");
        }
    }

    /// Stops this collector's PostgreSQL as a crash would (no checkpoint), under the collector.
    pub fn crash_database(&self) {
        let d = self.database.as_ref().expect("a collector on PostgreSQL");
        d.with_server(|s| s.stop_immediately());
    }

    /// Starts it again after [`Collector::crash_database`].
    pub fn restart_database(&self) {
        let d = self.database.as_ref().expect("a collector on PostgreSQL");
        d.with_server(|s| s.restart());
    }

    /// Whether this collector's PostgreSQL server runs.
    pub fn database_running(&self) -> bool {
        let d = self.database.as_ref().expect("a collector on PostgreSQL");
        d.with_server(|s| s.is_running())
    }

    /// Everything the store holds, as text: SQLite's database file and its write-ahead log read
    /// as bytes, or PostgreSQL's database as `pg_dump` writes it. For checks of what must never
    /// be stored in clear.
    pub fn store_contents(&self) -> String {
        match &self.database {
            Some(d) => d.with_server(|s| s.dump(&d.name)),
            None => ["hostwatch.db", "hostwatch.db-wal"]
                .iter()
                .map(|f| {
                    String::from_utf8_lossy(&std::fs::read(self.data_dir.join(f)).unwrap_or_default())
                        .into_owned()
                })
                .collect(),
        }
    }
}

impl Drop for Collector {
    /// Whatever a test did to it, a collector's log holds no credential: over the whole suite,
    /// every collector's log is checked as it stops.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(leak) = credential_in(&self.log()) {
            panic!("the collector's log holds a credential: {}…", &leak[..12]);
        }
        // The agents of the test write their logs beside the collector's directory (and are
        // stopped before it, being started after it).
        if let Some(dir) = self.data_dir.parent() {
            for log in agent_logs(dir, 3) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(leak) = credential_in(&text) {
                    panic!("{} holds a credential: {}…", log.display(), &leak[..12]);
                }
            }
        }
    }
}

/// Every `agent.log` under `dir`, `depth` levels down at most.
fn agent_logs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let path = e.path();
        if path.file_name().is_some_and(|n| n == "agent.log") {
            out.push(path);
        } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(agent_logs(&path, depth - 1));
        }
    }
    out
}

/// The first API token, enroll secret or node key (prefix and 64 hex digits) in `text`.
pub fn credential_in(text: &str) -> Option<&str> {
    ["hwt_", "hwe_", "hwn_"].iter().find_map(|prefix| {
        text.match_indices(prefix).find_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
            (hex >= 64).then(|| &text[at..at + prefix.len() + hex])
        })
    })
}

/// Starts `hostwatch-agent` against `collector`, configured by environment only (and an empty
/// config file, so the machine's /etc/hostwatch is never read).
pub fn start_agent(collector: &Collector, dir: &Path, tags: &str) -> Guard {
    start_agent_with(collector, dir, tags, &[])
}

/// The same, with more `HOSTWATCH_*` variables.
pub fn start_agent_with(collector: &Collector, dir: &Path, tags: &str, env: &[(&str, &str)]) -> Guard {
    start_agent_in(None, collector, dir, tags, env)
}

/// The same, in the network namespace `netns` when one is given (`ip netns exec`).
pub fn start_agent_in(
    netns: Option<&str>,
    collector: &Collector,
    dir: &Path,
    tags: &str,
    env: &[(&str, &str)],
) -> Guard {
    match netns {
        Some(ns) => start_agent_under(&["ip", "netns", "exec", ns], collector, dir, tags, env),
        None => start_agent_under(&[], collector, dir, tags, env),
    }
}

/// The same, started by `wrapper` (a program and its arguments, the agent's command line after
/// them; e.g. `setpriv` to take a capability away), or directly where it is empty.
pub fn start_agent_under(
    wrapper: &[&str],
    collector: &Collector,
    dir: &Path,
    tags: &str,
    env: &[(&str, &str)],
) -> Guard {
    let config = dir.join("agent.toml");
    std::fs::write(&config, "").expect("write agent.toml");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = tool(program);
            c.args(args).arg(bin("hostwatch-agent"));
            c
        }
        None => Command::new(bin("hostwatch-agent")),
    };
    let child = cmd
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("HOSTWATCH_SERVER", &collector.url)
        .env("HOSTWATCH_ENROLL_SECRET_FILE", &collector.enroll_secret_file)
        .env("HOSTWATCH_STATE_DIR", dir.join("agent-state"))
        .env("HOSTWATCH_INTERVAL", "1s")
        .env("HOSTWATCH_TAGS", tags)
        // Tests never ask a real metadata service, even on a cloud machine; a test of cloud
        // facts sets its own double.
        .env("HOSTWATCH_CLOUD_PROVIDER", "none")
        // The machine's /etc and /usr are not the tests' business; a test of files names its
        // own paths.
        .env("HOSTWATCH_FILES_DEFAULTS", "false")
        // The eBPF source sees every test's short connections (each CLI call to a collector)
        // on every test's host; the tests of it (connections.rs) turn it on.
        .env("HOSTWATCH_SOCKET_EVENTS", "false")
        // Probes would reach every test's listeners from every test's agent (and each probe is a
        // connection every other agent sees); the tests of them (probes.rs) turn them on.
        .env("HOSTWATCH_PROBES", "false")
        .envs(env.iter().copied())
        .env("HOSTWATCH_LOG", "info,hostwatch_agent=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).expect("agent log file"))
        .spawn()
        .expect("start hostwatch-agent");
    Guard(child)
}

/// `hostwatch-agent snapshot` in an empty environment but `env`: the report, and its stdout and
/// stderr as text.
pub fn agent_snapshot(env: &[(&str, &str)]) -> (proto::Report, String, String) {
    let out = Command::new(bin("hostwatch-agent"))
        .arg("snapshot")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (serde_json::from_str(&stdout).unwrap(), stdout, stderr)
}

/// `hostwatch-load` (the committed load generator) against `c` with `agents` simulated agents and
/// `args`, run to its end off the test's thread: its JSON summary with each agent's figures
/// (`--json --per-agent`), or a panic with what it printed.
pub fn simulated_fleet(
    c: &Collector,
    agents: usize,
    args: &[&str],
) -> tokio::task::JoinHandle<serde_json::Value> {
    let mut cmd = Command::new(bin("hostwatch-load"));
    cmd.args(["--server", &c.url, "--secret-file"])
        .arg(&c.enroll_secret_file)
        .args(["--agents", &agents.to_string()])
        .args(args)
        .args(["--json", "--per-agent"]);
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().expect("hostwatch-load runs");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "hostwatch-load's summary ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    })
}

/// The log of the agent started in `dir`, for failure messages.
pub fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A package `name` at `version` built here with `dpkg-deb`, holding `files` (path in the
/// package, content, mode).
pub fn build_deb(dir: &Path, name: &str, version: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let pkg = dir.join(format!("pkg-{name}-{version}"));
    std::fs::create_dir_all(pkg.join("DEBIAN")).expect("package tree");
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: hostwatch test package\n"
        ),
    )
    .expect("control file");
    for (path, content, mode) in files {
        let at = pkg.join(path);
        std::fs::create_dir_all(at.parent().expect("a file in a directory")).expect("package directory");
        std::fs::write(&at, content).expect("package file");
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)).expect("package file mode");
    }
    let deb = dir.join(format!("{name}_{version}.deb"));
    let out = tool("dpkg-deb")
        .arg("--root-owner-group")
        // Uncompressed: a package holding a debug binary takes seconds to compress.
        .arg("-Znone")
        .arg("--build")
        .arg(&pkg)
        .arg(&deb)
        .output()
        .expect("dpkg-deb (is dpkg installed?)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    deb
}

/// A package `name` at `version` (release 1) built here with `rpmbuild`, holding `files` (path in
/// the package, content, mode), exactly as given: no stripping or other post-processing.
pub fn build_rpm(dir: &Path, name: &str, version: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
    let top = dir.join(format!("rpmbuild-{name}-{version}"));
    let sources = top.join("content");
    std::fs::create_dir_all(&sources).expect("rpmbuild tree");
    let mut install = String::new();
    let mut listed = String::new();
    for (i, (path, content, mode)) in files.iter().enumerate() {
        let src = sources.join(i.to_string());
        std::fs::write(&src, content).expect("package file");
        install.push_str(&format!("install -D -m {mode:o} {} %{{buildroot}}/{path}\n", src.display()));
        listed.push_str(&format!("/{path}\n"));
    }
    let spec = top.join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: hostwatch test package\nLicense: none\n\
             %description\nhostwatch test package\n%install\n{install}%files\n{listed}"
        ),
    )
    .expect("spec file");
    let out = tool("rpmbuild")
        .args(["--quiet", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .args(["--define", "__os_install_post %{nil}", "--define", "debug_package %{nil}"])
        .args(["--define", "_build_id_links none", "-bb"])
        .arg(&spec)
        .output()
        .expect("rpmbuild (is rpm installed?)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rpms = top.join("RPMS");
    let found = std::fs::read_dir(&rpms)
        .expect("rpmbuild's RPMS")
        .flatten()
        .flat_map(|arch| std::fs::read_dir(arch.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "rpm"));
    found.expect("the built package")
}

/// `rpm --root=ROOT` with its database in ROOT/var/lib/rpm (Debian's rpm keeps its own in the
/// home directory otherwise): a database of the test's own.
pub fn rpm(root: &Path, args: &[&str]) {
    let out = tool("rpm")
        .arg(format!("--root={}", root.display()))
        .args(["--dbpath", "/var/lib/rpm"])
        .args(args)
        .output()
        .expect("rpm");
    assert!(out.status.success(), "rpm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `dpkg --root=ROOT` with `args`: a database and a file system of the test's own.
pub fn dpkg(root: &Path, args: &[&str]) {
    let out = tool("dpkg").arg(format!("--root={}", root.display())).args(args).output().expect("dpkg");
    assert!(out.status.success(), "dpkg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `python3 -m http.server` on `port` (0: any) on 127.0.0.1 and returns it with its port.
pub fn python_http_server(port: u16) -> (Guard, u16) {
    let mut child = tool("python3")
        .args(["-u", "-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server (is python3 installed?)");
    let stdout = child.stdout.take().expect("python stdout");
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // "Serving HTTP on 127.0.0.1 port 41235 (http://127.0.0.1:41235/) ..."
            if let Some(p) = line
                .split(" port ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                let _ = tx.send(p);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).expect("python3 http.server announced its port");
    (guard, port)
}

/// A package manager with a database under a root of the test's own.
#[derive(Debug, Clone, Copy)]
pub enum Manager {
    Dpkg,
    Rpm,
}

impl Manager {
    pub fn init(self, r: &Path) {
        std::fs::create_dir_all(r.join("opt")).unwrap();
        match self {
            Manager::Dpkg => {
                for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
                    std::fs::create_dir_all(r.join(d)).unwrap();
                }
                std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
            }
            Manager::Rpm => rpm(r, &["--initdb"]),
        }
    }

    /// Builds package `name` at `version` holding `path` (executable) and installs or upgrades it.
    pub fn install(self, r: &Path, d: &Path, name: &str, version: &str, path: &str, content: &[u8]) {
        let files: &[(&str, &[u8], u32)] = &[(path, content, 0o755)];
        match self {
            Manager::Dpkg => {
                let deb = build_deb(d, name, version, files);
                dpkg(r, &["-i", deb.to_str().unwrap()]);
            }
            Manager::Rpm => {
                let package = build_rpm(d, name, version, files);
                rpm(r, &["-U", "--nodeps", package.to_str().unwrap()]);
            }
        }
    }

    /// Removes package `name`.
    pub fn remove(self, r: &Path, name: &str) {
        match self {
            Manager::Dpkg => dpkg(r, &["-r", name]),
            Manager::Rpm => rpm(r, &["-e", "--nodeps", name]),
        }
    }

    /// The version the database records for `version`.
    pub fn recorded(self, version: &str) -> String {
        match self {
            Manager::Dpkg => version.to_owned(),
            Manager::Rpm => format!("{version}-1"),
        }
    }

    /// The agent's setting that points it at the database.
    pub fn setting(self, r: &Path) -> (&'static str, String) {
        match self {
            Manager::Dpkg => ("HOSTWATCH_FILES_DPKG_DIR", r.join("var/lib/dpkg").display().to_string()),
            Manager::Rpm => ("HOSTWATCH_FILES_RPM_DIR", r.join("var/lib/rpm").display().to_string()),
        }
    }
}

/// Spawns a program the test has just written itself (a script, a package's file; a copy goes
/// through [`copy_program`], which leaves this process no descriptor to it). Another test's
/// thread may fork while the file is open for writing; the child holds that descriptor until it
/// execs, and an exec of the file meanwhile fails with ETXTBSY ("text file busy"). That window is
/// microseconds: waiting it out (as Go's os/exec does) is the fix, not a retry of something that
/// failed.
pub fn spawn_copy(cmd: &mut Command) -> Child {
    for _ in 0..100 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other.expect("spawn the copied program"),
        }
    }
    cmd.spawn().expect("spawn the copied program (still busy after 1 s)")
}

/// A finished command's standard output, then its standard error, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
