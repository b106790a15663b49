//! A private PostgreSQL server for a test: Debian's PostgreSQL 15 binaries, a cluster made by
//! `initdb` in a temporary directory, listening only on a Unix socket in that directory (no TCP
//! port, nothing another test or the machine's own cluster could reach), stopped and removed
//! when dropped. PostgreSQL refuses to run as root, so the cluster belongs to the `postgres`
//! user and its commands run through `runuser`.
//!
//! Durability is off (`fsync`, `full_page_writes`): a test's cluster is thrown away, and a test
//! that needs a crash to be survived restarts the server, not the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::Turn;

/// Where Debian's PostgreSQL 15 server binaries are (package `postgresql-15`).
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// psql as the tests read it: no startup file, quiet, unaligned tuples only, stopping at the first
/// error.
const PSQL: &[&str] = &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];

/// The superuser of a test's cluster (trusted on its socket: only root and `postgres` can reach
/// the directory).
pub const USER: &str = "hostwatch";

/// A running private server; stopped, and its directory removed, on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    /// With TLS on loopback: its TCP port (the socket is numbered by it too).
    port: Option<u16>,
    /// Its own turn on the machine, or none for a server started under a collector's turn
    /// ([`PgServer::start_quiet`]).
    _turn: Option<Turn>,
    /// Autovacuum off: a server that starts no process of its own between the tests' turns.
    quiet: bool,
}

impl PgServer {
    /// Starts a fresh cluster, or panics saying what is missing.
    pub fn start() -> PgServer {
        Self::start_with(None, Some(Turn::shared()), None)
    }

    /// A server for the collectors of one test, started under their turn and holding none of
    /// its own (a test that has the machine to itself may start it). It starts no process
    /// unless a client connects (autovacuum off; only the collectors of its test connect), so
    /// it is nothing new to any other test's agent between that test's turns.
    pub fn start_quiet() -> PgServer {
        Self::start_with(None, None, None)
    }

    /// The same, its cluster in a directory made in `parent` (a small disk a test fills; the
    /// `postgres` user must be able to reach `parent`).
    pub fn start_quiet_in(parent: &Path) -> PgServer {
        Self::start_with(None, None, Some(parent))
    }

    /// The same, also listening on a free port of 127.0.0.1 with TLS only (`cert` and `key`,
    /// PEM files): a database "on the network" that cannot leave this machine. Clients on the
    /// port must use TLS (`hostnossl` is refused); the socket stays open to the tests' psql.
    pub fn start_tls(cert: &Path, key: &Path) -> PgServer {
        Self::start_with(Some((cert, key)), Some(Turn::shared()), None)
    }

    /// The TCP port of a server started with TLS.
    pub fn port(&self) -> u16 {
        self.port.expect("a server started with TLS")
    }

    fn start_with(tls: Option<(&Path, &Path)>, turn: Option<Turn>, parent: Option<&Path>) -> PgServer {
        let quiet = turn.is_none();
        for tool in ["initdb", "pg_ctl", "postgres"] {
            let path = Path::new(BIN).join(tool);
            assert!(
                path.exists(),
                "{} not found: the PostgreSQL tests need Debian's postgresql-15 (`apt install postgresql-15`; .ci/run installs it)",
                path.display()
            );
        }
        assert!(
            Command::new("id").arg("-u").arg("postgres").output().is_ok_and(|o| o.status.success()),
            "no `postgres` user: PostgreSQL runs as it (Debian's postgresql-common creates it)"
        );
        let mut dir = tempfile::Builder::new();
        dir.prefix("hw-pg-");
        let dir = match parent {
            Some(parent) => dir.tempdir_in(parent),
            None => dir.tempdir(),
        }
        .expect("temporary directory");
        run("chown", Command::new("chown").arg("postgres:postgres").arg(dir.path()));
        let port = tls.map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        });
        let server = PgServer { dir, port, _turn: turn, quiet };
        server.as_postgres(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        if let Some((cert, key)) = tls {
            let data = server.data();
            std::fs::copy(cert, data.join("server.crt")).expect("copy the certificate");
            std::fs::copy(key, data.join("server.key")).expect("copy the key");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .expect("write pg_hba.conf");
            for f in ["server.crt", "server.key", "pg_hba.conf"] {
                run("chown", Command::new("chown").arg("postgres:postgres").arg(data.join(f)));
            }
            run("chmod", Command::new("chmod").arg("0600").arg(data.join("server.key")));
        }
        server.pg_ctl_start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's socket: `host` in a connection string.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection URL for `database` on this server, as `database = "postgres://…"` takes it.
    pub fn url(&self, database: &str) -> String {
        let port = self.port.map(|p| format!("&port={p}")).unwrap_or_default();
        format!("postgres://{USER}@/{database}?host={}{port}", self.socket_dir().display())
    }

    /// Runs SQL through `psql` as the superuser and returns what it printed (unaligned, tuples
    /// only), or panics with psql's error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = run("psql", self.client("psql", database).args(PSQL).args(["-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The same, each row's fields separated by a tab.
    pub fn psql_fields(&self, database: &str, sql: &str) -> String {
        let out = run("psql", self.client("psql", database).args(PSQL).args(["-F", "\t", "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A psql session on `database` as the superuser, reading SQL from its stdin (piped, as its
    /// stdout is; tuples only, unaligned); it ends when its stdin closes.
    pub fn session(&self, database: &str) -> std::process::Child {
        self.client("psql", database)
            .args(PSQL)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start psql")
    }

    /// Everything in `database` as `pg_dump` writes it (SQL text), to look for what must never
    /// be stored in clear.
    pub fn dump(&self, database: &str) -> String {
        let out = run("pg_dump", &mut self.client("pg_dump", database));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A client tool (`psql`, `pg_dump`) for `database` as the superuser, on the server's socket.
    fn client(&self, tool: &str, database: &str) -> Command {
        let mut cmd = super::tool(tool);
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.unwrap_or(5432).to_string()])
            .args(["-U", USER, "-d", database]);
        cmd
    }

    /// Stops the server as a crash would (immediate: no checkpoint), for tests of a database
    /// that goes away under the collector.
    pub fn stop_immediately(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data().to_string_lossy(), "-m", "immediate", "-w", "stop"]);
    }

    /// Starts the server again after [`PgServer::stop_immediately`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// Whether the server runs (`pg_ctl status`): a server that stopped by itself (a write-ahead
    /// log it could not write) is started again by the test.
    pub fn is_running(&self) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-D", &self.data().to_string_lossy(), "status"])
            .current_dir(self.dir.path())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn pg_ctl_start(&self) {
        let network = match self.port {
            Some(port) => format!("-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on"),
            None => "-c listen_addresses=''".to_owned(),
        };
        let quiet = if self.quiet { " -c autovacuum=off" } else { "" };
        let options = format!(
            "{network} -k {} -c fsync=off -c full_page_writes=off{quiet}",
            self.socket_dir().display()
        );
        let data = self.data();
        let log = self.dir.path().join("server.log");
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> Output {
        let path = Path::new(BIN).join(tool);
        run(
            tool,
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .current_dir(self.dir.path()),
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Fast: rolls back what is open and stops; never leaves a server behind the test.
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-D", &self.data().to_string_lossy(), "-m", "fast", "-w", "-t", "30", "stop"])
            .output();
    }
}

/// Runs a command to completion, or panics with what it printed.
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
