//! Fleet queries: read-only SQL through `hostwatch query`, as a whole process against a running
//! collector, with what it refuses and what it audits.

use hostwatch_proto::v1 as proto;
use serde_json::Value;

use crate::events::host_with_workload;
use crate::support::{Collector, text};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_reads_the_views_in_json_and_csv_and_no_write_passes() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let analyst = create_token(&c, "analyst");
    let reader = create_token(&c, "reader");
    // Text that CSV must quote, a NULL, a real, and what the agent reported.
    let sql = format!(
        "SELECT id, hostname, status, workload, 'a,\"b\"' || char(10) || 'c' AS tricky, NULL AS missing, \
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
    assert_eq!(
        (&row["missing"], &row["real"], &row["runs"]),
        (&Value::Null, &Value::from(1.5), &Value::from(1))
    );
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
    for (sql, says) in [
        (format!("DELETE FROM main.hosts WHERE id = {}", host.id), "DELETE"),
        ("SELECT token_hash FROM main.api_tokens".to_owned(), "api_tokens"),
        ("SELECT key_hash FROM node_keys".to_owned(), "node_keys"),
        ("ATTACH DATABASE '/tmp/hw-attached.db' AS x".to_owned(), "ATTACH"),
        ("PRAGMA writable_schema = ON".to_owned(), "PRAGMA writable_schema"),
    ] {
        let out = c.cli_as(&analyst, &["query", &sql]);
        assert!(!out.status.success(), "{sql} passed");
        assert!(text(&out).contains(says) && text(&out).contains("not allowed"), "{sql}: {}", text(&out));
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
    assert!(
        queries.iter().any(|e| e.detail["sql"] == "SELECT token_hash FROM main.api_tokens"),
        "{queries:?}"
    );
    assert!(!queries.iter().any(|e| e.actor.contains("q-reader")), "a refused role was audited as a query");
}
