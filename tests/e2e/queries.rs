//! Fleet queries: read-only SQL through `hostwatch query`, as a whole process against a running
//! collector, with what it refuses and what it audits.

use hostwatch_proto::v1 as proto;
use serde_json::Value;

use crate::events::host_with_workload;
use crate::support::{Collector, on_both_stores, text};

fn create_token(c: &Collector, role: &str) -> String {
    let out = c.cli(&["token", "create", "--name", &format!("q-{role}"), "--role", role]);
    assert!(out.status.success(), "token create: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A JSON value as the CSV output writes it.
fn as_csv(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_analyst_reads_the_views_in_json_and_csv_and_no_write_passes
);
async fn an_analyst_reads_the_views_in_json_and_csv_and_no_write_passes() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let analyst = create_token(&c, "analyst");
    let reader = create_token(&c, "reader");
    // Text that CSV must quote, a NULL, a real, and what the agent reported; in each store's
    // dialect (a comparison is an integer in SQLite, a boolean in PostgreSQL).
    let pg = c.on_postgres();
    let (newline, runs) = if pg { ("chr(10)", Value::from(true)) } else { ("char(10)", Value::from(1)) };
    let sql = format!(
        "SELECT id, hostname, status, workload, 'a,\"b\"' || {newline} || 'c' AS tricky, NULL AS missing, \
         1.5 AS real, (SELECT count(*) FROM processes p WHERE p.host_id = hosts.id) > 0 AS runs \
         FROM hosts WHERE id = {}",
        host.id
    );
    let out = c.cli_as(&analyst, &["query", &sql, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], Value::from(host.id));
    assert_eq!(row["hostname"], Value::from(host.hostname.clone()));
    assert_eq!(row["status"], "online");
    assert_eq!(row["workload"], Value::from(host.workload.clone()));
    assert_eq!(row["tricky"], "a,\"b\"\nc");
    assert_eq!((&row["missing"], &row["real"], &row["runs"]), (&Value::Null, &Value::from(1.5), &runs));
    // CSV parses back into the same rows, in the same column order.
    let out = c.cli_as(&analyst, &["query", &sql, "--output", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut csv = csv::Reader::from_reader(out.stdout.as_slice());
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
    let columns = ["id", "hostname", "status", "workload", "tricky", "missing", "real", "runs"];
    assert_eq!(header, columns);
    let records: Vec<Vec<String>> =
        csv.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    assert_eq!(records, vec![columns.iter().map(|c| as_csv(&row[*c])).collect::<Vec<_>>()]);
    // A table for people names the columns.
    let out = c.cli_as(&analyst, &["query", &sql]);
    assert!(text(&out).contains("HOSTNAME") && text(&out).contains(&host.hostname), "{}", text(&out));

    // A reader may not run SQL; nobody may write, read credentials or attach.
    let out = c.cli_as(&reader, &["query", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("analyst"), "{}", text(&out));
    // SQLite's authorizer names what it refuses; PostgreSQL refuses as the analysts' role and
    // its read-only transaction do, each for its own reason.
    let credentials = if pg {
        "SELECT token_hash FROM public.api_tokens"
    } else {
        "SELECT token_hash FROM main.api_tokens"
    };
    let refused: Vec<(String, &str)> = if pg {
        vec![
            (
                format!("DELETE FROM public.hosts WHERE id = {}", host.id),
                "refused: only a statement that reads",
            ),
            ("VACUUM public.hosts".to_owned(), "refused: only a statement that reads"),
            (
                format!(
                    "WITH d AS (DELETE FROM public.hosts WHERE id = {} RETURNING id) SELECT * FROM d",
                    host.id
                ),
                "data-modifying statement",
            ),
            (credentials.to_owned(), "refused: permission denied for table api_tokens"),
            ("SELECT key_hash FROM node_keys".to_owned(), "relation \"node_keys\" does not exist"),
            (
                "SELECT set_config('role', 'hostwatch', false)".to_owned(),
                "refused: permission denied to set role",
            ),
            (
                "SELECT pg_read_file('/etc/hostname')".to_owned(),
                "refused: permission denied for function pg_read_file",
            ),
        ]
    } else {
        [
            (format!("DELETE FROM main.hosts WHERE id = {}", host.id), "DELETE"),
            (credentials.to_owned(), "api_tokens"),
            ("SELECT key_hash FROM node_keys".to_owned(), "node_keys"),
            ("ATTACH DATABASE '/tmp/hw-attached.db' AS x".to_owned(), "ATTACH"),
            ("PRAGMA writable_schema = ON".to_owned(), "PRAGMA writable_schema"),
        ]
        .into()
    };
    for (sql, says) in refused {
        let out = c.cli_as(&analyst, &["query", &sql]);
        assert!(!out.status.success(), "{sql} passed");
        let said = text(&out);
        assert!(said.contains(says), "{sql}: {said}");
        assert!(pg || said.contains("not allowed"), "{sql}: {said}");
    }
    let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
    assert!(hosts.iter().any(|h| h.id == host.id), "the host is gone");
    let out = c.cli_as(&analyst, &["query", "SELEC hostname FROM hosts"]);
    assert!(text(&out).contains("syntax error"), "{}", text(&out));

    // Each query is in the audit, whoever ran it and whatever became of it.
    let audit: Vec<proto::AuditEntry> = c.cli_json(&["audit"]);
    let queries: Vec<&proto::AuditEntry> = audit.iter().filter(|e| e.action == "query").collect();
    assert!(
        queries.iter().any(|e| e.actor.contains("q-analyst") && e.detail["sql"] == sql.as_str()),
        "{queries:?}"
    );
    assert!(queries.iter().any(|e| e.detail["sql"] == credentials), "{queries:?}");
    assert!(!queries.iter().any(|e| e.actor.contains("q-reader")), "a refused role was audited as a query");
}

/// The CLI's JSON of a listing, with its stderr; panics when it fails.
fn listing<T: serde::de::DeserializeOwned>(c: &Collector, args: &[&str]) -> (Vec<T>, String) {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = c.cli(&all);
    assert!(out.status.success(), "hostwatch {args:?}: {}", text(&out));
    let rows = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hostwatch {args:?}: bad JSON ({e}): {}", text(&out)));
    (rows, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A copy of sleep with bytes of its own after the ELF, so that its SHA-256 is this test's.
fn unique_sleep(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let path = crate::events::sleep_copy(dir, name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(crate::support::unique("hostwatch-e2e").as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new("sha256sum").arg(&path).output().expect("sha256sum (coreutils)");
    let sha = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(sha.len(), 64, "sha256sum: {}", text(&out));
    (path, sha)
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    each_incident_filter_finds_what_this_host_runs_and_pages_hold_each_row_once
);
async fn each_incident_filter_finds_what_this_host_runs_and_pages_hold_each_row_once() {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use crate::support::{Guard, wait_for};
    const WAIT: Duration = Duration::from_secs(60);

    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let (h, hs) = (host.id, host.id.to_string());
    let workload = host.workload.clone().expect("a workload");
    // A program of this test's own hash, outside the temporary directories.
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let (exe, sha) = unique_sleep(run.path(), "incident-probe");
    let probe = Guard(Command::new(&exe).arg("300").spawn().unwrap());
    // A listener on every interface, and a connection to it over loopback.
    let mut py = crate::support::tool("python3")
        .args([
            "-c",
            "import socket,time\n\
             s=socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(4)\n\
             p=s.getsockname()[1]; c=socket.create_connection(('127.0.0.1', p)); a=s.accept()\n\
             print(p, flush=True); time.sleep(300)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(py.stdout.take().unwrap()), &mut line).unwrap();
    let _py = Guard(py);
    let port = line.trim().to_owned();

    // Which hosts run this sha256.
    let sha_rows: Vec<proto::Located<proto::Process>> = wait_for("ps --sha256", WAIT, async || {
        let (rows, _) = listing::<proto::Located<proto::Process>>(&c, &["ps", "--sha256", &sha]);
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(sha_rows.len(), 1, "{sha_rows:?}");
    assert_eq!((sha_rows[0].host_id, sha_rows[0].item.pid), (h, probe.pid() as u32));
    // This test's own directory: the same test on the other store runs beside it, with a probe
    // of its own that this host's agent sees too.
    let own =
        run.path().file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("hw-e2e-")).unwrap();
    let glob = format!("/run/hw-e2e-*{own}/incident-*");
    let (by_exe, _) = listing::<proto::Located<proto::Process>>(&c, &["ps", "--exe", &glob]);
    assert_eq!(by_exe.iter().map(|r| r.item.pid).collect::<Vec<_>>(), [probe.pid() as u32]);
    let (none, _) = listing::<proto::Located<proto::Process>>(&c, &["ps", "--sha256", &"0".repeat(64)]);
    assert!(none.is_empty(), "{none:?}");

    // Which hosts listen on 0.0.0.0 on this port; which talk to 127.0.0.0/8 on it.
    let ports: Vec<proto::Located<proto::Listener>> = wait_for("ports --port --address", WAIT, async || {
        let (rows, _) = listing::<proto::Located<proto::Listener>>(
            &c,
            &["ports", "--port", &port, "--address", "0.0.0.0"],
        );
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert!(ports.iter().all(|l| l.item.port.to_string() == port && l.item.address.to_string() == "0.0.0.0"));
    assert!(ports.iter().any(|l| l.host_id == h), "{ports:?}");
    let (on_loopback, _) =
        listing::<proto::Located<proto::Listener>>(&c, &["ports", "--port", &port, "--address", "127.0.0.1"]);
    assert!(on_loopback.is_empty(), "{on_loopback:?}");
    let conns: Vec<proto::Located<proto::Connection>> = wait_for("conns --remote --port", WAIT, async || {
        let (rows, _) = listing::<proto::Located<proto::Connection>>(
            &c,
            &["conns", "--remote", "127.0.0.0/8", "--port", &port],
        );
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert!(
        conns.iter().all(|r| r.item.remote_address.is_loopback() && r.item.remote_port.to_string() == port)
    );
    let (elsewhere, _) = listing::<proto::Located<proto::Connection>>(
        &c,
        &["conns", "--remote", "10.0.0.0/8", "--port", &port],
    );
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    let (bad, _) = (c.cli(&["conns", "--remote", "10.0.0.0/33"]), ());
    assert!(!bad.status.success() && text(&bad).contains("CIDR"), "{}", text(&bad));

    // The same questions of the history: what started it, who opened what to where.
    let (execs, _) = listing::<proto::ProcessEvent>(
        &c,
        &["history", "processes", "--sha256", &sha, "--exe", "*/incident-probe", "--since", "10m"],
    );
    if execs.is_empty() {
        let (all, _) =
            listing::<proto::ProcessEvent>(&c, &["history", "processes", "--host", &hs, "--since", "10m"]);
        let mine: Vec<_> = all.iter().filter(|e| e.pid == probe.pid() as u32).collect();
        let q = c.cli(&[
            "query",
            &format!("SELECT kind, pid, exe, sha256 FROM process_events WHERE pid = {}", probe.pid()),
        ]);
        panic!("no exec by sha and exe; the probe's history: {mine:?}; {}", text(&q));
    }
    assert_eq!(
        execs.iter().map(|e| (e.kind.as_str(), e.pid)).collect::<Vec<_>>(),
        [("exec", probe.pid() as u32)]
    );
    let (opened, _) = listing::<proto::SocketEvent>(
        &c,
        &["history", "sockets", "--remote", "127.0.0.1", "--port", &port, "--since", "10m", "--host", &hs],
    );
    assert!(opened.iter().any(|e| e.kind == "open" && e.socket == "connection"), "{opened:?}");
    assert!(opened.iter().all(|e| e.remote_port.map(|p| p.to_string()) == Some(port.clone())));

    // Hosts by status, workload and tag.
    let (mine, _) = listing::<proto::Host>(
        &c,
        &["hosts", "--workload", &workload, "--status", "online", "--tag", &format!("role={workload}")],
    );
    assert_eq!(mine.iter().map(|h| h.id).collect::<Vec<_>>(), [h]);
    let (offline, _) = listing::<proto::Host>(&c, &["hosts", "--status", "offline,stopped"]);
    assert!(!offline.iter().any(|x| x.id == h));

    // Findings of its workload, most severe first; a severity filter keeps that or worse.
    wait_for("the probe's finding", WAIT, async || {
        let (rows, _) = listing::<proto::Finding>(&c, &["findings", "--workload", &workload]);
        rows.iter().any(|f| f.subject == exe.display().to_string()).then_some(())
    })
    .await;
    let (all, _) = listing::<proto::Finding>(&c, &["findings", "--workload", &workload, "--since", "1h"]);
    assert!(all.iter().all(|f| f.host_id == h));
    assert!(all.windows(2).all(|w| w[0].severity >= w[1].severity), "not most severe first: {all:?}");
    let worst = all[0].severity;
    let (severe, _) =
        listing::<proto::Finding>(&c, &["findings", "--workload", &workload, "--severity", worst.as_str()]);
    assert_eq!(severe.len(), all.iter().filter(|f| f.severity >= worst).count());

    // Pages: a process listing read three rows at a time while processes start and end between
    // pages holds every process that lived throughout exactly once.
    let http = reqwest::Client::new();
    let mut seen: Vec<u32> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut churn = Vec::new();
    loop {
        let mut url = format!("{}{}?host={h}&limit=3", c.url, proto::PROCESSES_PATH);
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let resp = http.get(&url).bearer_auth(&c.admin_token).send().await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        cursor = resp.headers().get(proto::NEXT_CURSOR_HEADER).map(|v| v.to_str().unwrap().to_owned());
        let rows: Vec<proto::Located<proto::Process>> = resp.json().await.unwrap();
        assert!(rows.len() <= 3);
        seen.extend(rows.iter().map(|r| r.item.pid));
        churn.push(Guard(Command::new("sleep").arg("30").spawn().unwrap()));
        if churn.len() > 3 {
            churn.remove(0);
        }
        if cursor.is_none() {
            break;
        }
    }
    for lived in [probe.pid() as u32, _agent.pid() as u32] {
        assert_eq!(seen.iter().filter(|p| **p == lived).count(), 1, "pid {lived} in {seen:?}");
    }
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a process on two pages: {seen:?}");

    // The CLI says when --limit leaves rows, and --cursor goes on from there.
    let (first, said) = listing::<proto::Located<proto::Process>>(&c, &["ps", "--host", &hs, "--limit", "2"]);
    assert_eq!(first.len(), 2);
    let next =
        said.split("--cursor ").nth(1).and_then(|r| r.split_whitespace().next()).expect(&said).to_owned();
    let (second, _) = listing::<proto::Located<proto::Process>>(
        &c,
        &["ps", "--host", &hs, "--limit", "2", "--cursor", &next],
    );
    assert_eq!(second.len(), 2);
    assert!(second[0].item.pid > first[1].item.pid, "{first:?} then {second:?}");
}
