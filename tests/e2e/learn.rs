//! Learning round trip on a real host: learn a baseline from what the host runs (and ran in the
//! window), apply it, and nothing it explained is a finding; start something new, and that is
//! exactly one finding. The test has the machine to itself (see `Collector::start_alone`):
//! another test's processes starting meanwhile would be new to the baseline too.

use std::process::Command;
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, on_both_stores, python_http_server, start_agent, unique, wait_for};

const WAIT: Duration = Duration::from_secs(45);

/// Kinds a baseline explains (built-in rules are not a baseline's to explain).
const BASELINE_KINDS: &[&str] = &[
    "unexpected_process",
    "missing_process",
    "unexpected_listener",
    "missing_listener",
    "unexpected_connection",
    "no_baseline",
    "ambiguous_workload",
];

/// The open findings of the kinds a baseline explains, as (kind, subject), read from the
/// collector's database file without a connection: once the baseline is applied, the test must
/// not itself be something new on the host (each CLI call is a new connection to the collector,
/// too short-lived for the agent to have seen one while learning).
fn open_baseline_findings(c: &Collector, host: i64) -> Vec<(String, String)> {
    let kinds: Vec<String> = BASELINE_KINDS.iter().map(|k| format!("'{k}'")).collect();
    let sql = format!(
        "SELECT kind, subject FROM findings WHERE host_id = {host} AND status = 'open' AND kind IN ({}) ORDER BY id",
        kinds.join(", ")
    );
    db(c, &sql).into_iter().map(|mut r| (r.remove(0), r.remove(0))).collect()
}

/// The interpreter `python3` runs, resolved once before learning: a launcher in front of it
/// (pyenv's shim is a bash script run through `/usr/bin/env`) starts programs of its own at every
/// call, and one caught after learning would be something new on the host.
fn real_python() -> &'static str {
    static REAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REAL.get_or_init(|| {
        let out = crate::support::tool("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap();
        assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Rows of a read-only query on the collector's store without a connection to the collector:
/// its SQLite file through python3's sqlite3 module, or its PostgreSQL database through psql on
/// the server's socket.
fn db(c: &Collector, sql: &str) -> Vec<Vec<String>> {
    if c.on_postgres() {
        return c.store_rows(sql);
    }
    c.sqlite_rows(real_python(), sql)
}

/// A copy of `/bin/sleep` named `name` in `dir`, running.
fn sleeper(dir: &std::path::Path, name: &str) -> (Guard, String) {
    let exe = dir.join(name);
    crate::support::copy_program("/bin/sleep", &exe);
    (Guard(Command::new(&exe).arg("600").spawn().unwrap()), exe.display().to_string())
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_learned_baseline_explains_its_hosts_and_only_what_is_new_is_a_finding
);
async fn a_learned_baseline_explains_its_hosts_and_only_what_is_new_is_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start_alone(dir.path(), "");
    // Outside the temporary directories, so no built-in rule is about them.
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let role = unique("learn");
    real_python();
    let _agent = start_agent(&c, dir.path(), &format!("role={role},team=e2e"));
    let host = c.online(&role).await;
    let h = host.id.to_string();
    // What reads the store later (python3, or psql and its perl wrapper) runs in the window too.
    assert_eq!(db(&c, &format!("SELECT id FROM hosts WHERE id = {h}")), [[h.clone()]]);
    let (_worker, worker_exe) = sleeper(run.path(), &unique("worker"));
    let (_web, port) = python_http_server(0);
    // A process that ran in the window and is gone by the time of learning: history covers it.
    let (mut brief, brief_exe) = sleeper(run.path(), &unique("brief"));
    wait_for("the workload seen", WAIT, async || {
        let ps: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps", "--host", &h]);
        let ports: Vec<proto::Located<proto::Listener>> = c.cli_json(&["ports", "--host", &h]);
        let has = |exe: &str| ps.iter().any(|p| p.item.exe.as_deref() == Some(exe));
        (has(&worker_exe) && has(&brief_exe) && ports.iter().any(|l| l.item.port == port)).then_some(())
    })
    .await;
    brief.terminate(Duration::from_secs(5));

    let out = c.cli(&[
        "baseline",
        "learn",
        "--selector",
        &format!("role={role}"),
        "--since",
        "10m",
        "--name",
        &role,
    ]);
    assert!(out.status.success(), "learn failed: {}", String::from_utf8_lossy(&out.stderr));
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains(&format!("exe = \"{brief_exe}\"")), "what ran in the window is in it:\n{toml}");
    assert!(toml.contains("# seen on 1 of 1 host\n[[process]]"), "{toml}");
    let file = dir.path().join("learned.toml");
    std::fs::write(&file, &toml).unwrap();
    let lint = c.cli(&["baseline", "lint", file.to_str().unwrap()]);
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stderr));
    let _: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", file.to_str().unwrap()]);

    // Everything explained: no finding a baseline is about, and it stays so.
    wait_for("the host held to the learned baseline", WAIT, async || {
        let workload = db(&c, &format!("SELECT workload FROM hosts WHERE id = {}", host.id));
        (workload == [[role.clone()]] && open_baseline_findings(&c, host.id).is_empty()).then_some(())
    })
    .await;
    c.more_reports_judged(host.id).await;
    let left = open_baseline_findings(&c, host.id);
    assert!(left.is_empty(), "findings against the learned baseline: {left:#?}\n{toml}");

    // Something new: exactly one finding.
    let (_new, new_exe) = sleeper(run.path(), &unique("intruder"));
    let found = wait_for("the new process's finding", WAIT, async || {
        let f = open_baseline_findings(&c, host.id);
        (!f.is_empty()).then_some(f)
    })
    .await;
    c.more_reports_judged(host.id).await;
    let now = open_baseline_findings(&c, host.id);
    assert_eq!(now, [("unexpected_process".to_owned(), new_exe)], "first seen: {found:#?}");
}
