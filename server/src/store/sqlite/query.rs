//! Read-only SQL for analysts (`hostwatch query`): one statement over the documented views
//! (`views.sql`), on connections of its own.
//!
//! Invariants, each enforced on its own so that no single mistake opens the store:
//! - the connection is opened read-only and `query_only`: SQLite itself refuses any write;
//! - an authorizer allows a query to read a table only through one of the views (never a table
//!   directly, never `sqlite_schema`), and denies every other action (ATTACH, PRAGMA, CREATE,
//!   transactions) whatever SQLite would otherwise allow;
//! - the statement must be a single one that SQLite reports read-only;
//! - a progress handler stops it at its deadline, and results are cut (and said to be cut) at
//!   the row and byte limits, so no query can hold a connection or the collector's memory.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::store::{MAX_SQL_BYTES, QueryRows, QueryTerms, Result, StoreError};

use crate::store::QUERY_VIEWS as VIEWS;

const VIEWS_SQL: &str = include_str!("views.sql");

/// Largest string or blob a query may make (SQLite's own default is 1 GB).
const MAX_VALUE_BYTES: i32 = 16 << 20;
/// Virtual machine steps between two looks at the deadline.
const PROGRESS_STEPS: i32 = 10_000;

thread_local! {
    /// The running query's deadline, read by the progress handler (the query runs on this
    /// thread from start to end).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The collector's offline rule for the running query, read by `offline_after_seconds()`.
    static OFFLINE_AFTER: Cell<Option<f64>> = const { Cell::new(None) };
    /// What the authorizer denied, to say so in the error.
    static DENIED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A query's terms on this thread while it runs; cleared when dropped.
struct Scope;

impl Scope {
    fn enter(terms: &QueryTerms) -> Scope {
        DEADLINE.set(Some(Instant::now() + terms.timeout));
        OFFLINE_AFTER.set(terms.offline_after.map(|d| d.as_secs_f64()));
        DENIED.set(None);
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        DEADLINE.set(None);
        OFFLINE_AFTER.set(None);
        DENIED.set(None);
    }
}

/// Opens a connection for analysts' SQL on the database at `path`.
pub(super) fn open(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Database(format!("cannot open {} for queries: {e}", path.display())))?;
    super::connections::tune(&conn)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES as i32)?;
    // Used by the hosts view: the collector's `offline_after`, else 3 of the host's intervals
    // and at least 30 s (as `Host::offline_limit`).
    conn.create_scalar_function(
        "offline_after_seconds",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let interval: i64 = ctx.get(0)?;
            let fixed = OFFLINE_AFTER.get().and_then(|s| Duration::try_from_secs_f64(s).ok());
            Ok(crate::model::offline_limit(u32::try_from(interval).unwrap_or(u32::MAX), fixed).as_secs_f64())
        },
    )?;
    conn.execute_batch(&VIEWS_SQL.replace("{OFFLINE_SECONDS}", "offline_after_seconds(h.interval_secs)"))?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA trusted_schema = OFF;")?;
    conn.progress_handler(PROGRESS_STEPS, Some(|| DEADLINE.get().is_some_and(|d| Instant::now() >= d)))?;
    conn.authorizer(Some(authorize))?;
    Ok(conn)
}

/// What a query may do: select, read a table only through a view, call functions (but load
/// no extension), recurse. Anything else is denied, and remembered to say so.
fn authorize(ctx: AuthContext<'_>) -> Authorization {
    let through_view = |accessor: Option<&str>| accessor.is_some_and(|a| VIEWS.contains(&a));
    let denied = match ctx.action {
        AuthAction::Select | AuthAction::Recursive => return Authorization::Allow,
        AuthAction::Read { .. } if through_view(ctx.accessor) => return Authorization::Allow,
        // A view's own columns, in the temp schema: the view expands to what it reads.
        AuthAction::Read { table_name, .. }
            if ctx.database_name == Some("temp") && VIEWS.contains(&table_name) =>
        {
            return Authorization::Allow;
        }
        // No schema: a common table expression or a subquery's name, not a table.
        AuthAction::Read { .. } if ctx.database_name.is_none() => return Authorization::Allow,
        // No column: a table the query joins on but reads nothing of (SQLite names it so), which
        // tells only how many rows it has; allowed for the tables under the views alone.
        AuthAction::Read { table_name, column_name: "" }
            if ctx.database_name == Some("main") && VIEWS.contains(&table_name) =>
        {
            return Authorization::Allow;
        }
        AuthAction::Function { function_name } if !function_name.eq_ignore_ascii_case("load_extension") => {
            return Authorization::Allow;
        }
        AuthAction::Read { table_name, .. } => format!("reading the table {table_name:?}"),
        AuthAction::Function { function_name } => format!("calling {function_name}()"),
        AuthAction::Pragma { pragma_name, .. } => format!("PRAGMA {pragma_name}"),
        AuthAction::Attach { .. } => "ATTACH".to_owned(),
        AuthAction::Detach { .. } => "DETACH".to_owned(),
        AuthAction::Insert { table_name } => format!("INSERT into {table_name:?}"),
        AuthAction::Update { table_name, .. } => format!("UPDATE of {table_name:?}"),
        AuthAction::Delete { table_name } => format!("DELETE from {table_name:?}"),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => "a transaction".to_owned(),
        other => format!("{other:?}"),
    };
    DENIED.with_borrow_mut(|d| {
        d.get_or_insert(denied);
    });
    Authorization::Deny
}

/// Runs one statement of an analyst on `conn` (opened by [`open`]).
pub(super) fn run(conn: &Connection, sql: &str, terms: &QueryTerms) -> Result<QueryRows> {
    let sql = crate::store::query_text(sql)?;
    let _scope = Scope::enter(terms);
    let mut stmt = conn.prepare(sql).map_err(|e| refusal(e, terms.timeout))?;
    if !stmt.readonly() {
        return Err(StoreError::Query("only a SELECT (or WITH … SELECT) can be run".to_owned()));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut out = QueryRows { columns, rows: Vec::new(), truncated: false };
    let mut bytes = 0usize;
    let mut rows = stmt.query([]).map_err(|e| refusal(e, terms.timeout))?;
    while let Some(r) = rows.next().map_err(|e| refusal(e, terms.timeout))? {
        if out.rows.len() as u64 >= terms.max_rows || bytes >= terms.max_bytes {
            out.truncated = true;
            break;
        }
        let mut row = Vec::with_capacity(out.columns.len());
        for i in 0..out.columns.len() {
            let v = r.get_ref(i)?;
            bytes += match v {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len() + 8,
                _ => 8,
            };
            row.push(value(v));
        }
        out.rows.push(row);
    }
    Ok(out)
}

/// A cell as JSON: text as a string (not valid UTF-8: lossily), a blob as lowercase hex.
fn value(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect::<String>().into(),
    }
}

/// Why SQLite would not run or finish a query, in the analyst's terms; failures that are not the
/// query's stay store errors.
fn refusal(e: rusqlite::Error, timeout: Duration) -> StoreError {
    use rusqlite::ErrorCode as C;
    let views = VIEWS.join(", ");
    let (code, msg) = match &e {
        rusqlite::Error::MultipleStatement => {
            return StoreError::Query(
                "one statement at a time: remove what follows the first `;`".to_owned(),
            );
        }
        rusqlite::Error::SqliteFailure(f, msg) => (f.code, msg.clone().unwrap_or_else(|| f.to_string())),
        // Where in the statement SQLite found the problem, with its message.
        rusqlite::Error::SqlInputError { error, msg, offset, .. } => {
            (error.code, format!("{msg} (at byte {offset} of the query)"))
        }
        _ => return StoreError::from(e),
    };
    match code {
        C::AuthorizationForStatementDenied => {
            let what = DENIED.with_borrow(|d| d.clone()).unwrap_or_else(|| "that".to_owned());
            StoreError::Query(format!("{what} is not allowed: a query may only read the views {views}"))
        }
        C::OperationInterrupted => StoreError::Query(format!(
            "the query ran longer than {} and was stopped; narrow it (a WHERE on host_id, a LIMIT)",
            humantime::format_duration(timeout)
        )),
        // The store's own trouble stays the store's; anything else is the query's.
        C::DatabaseBusy
        | C::DatabaseLocked
        | C::DiskFull
        | C::SystemIoFailure
        | C::DatabaseCorrupt
        | C::NotADatabase
        | C::CannotOpen => StoreError::from(e),
        _ => StoreError::Query(format!("{msg} (the views are {views})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;

    fn terms() -> QueryTerms {
        QueryTerms {
            timeout: Duration::from_secs(10),
            max_rows: 1000,
            max_bytes: 1 << 20,
            offline_after: None,
        }
    }

    /// A store on disk with two hosts, a process, a finding and a token: what the tests read.
    async fn store(dir: &Path) -> SqliteStore {
        let s = SqliteStore::open(&dir.join("hw.db")).unwrap();
        s.tx(|tx| {
            tx.execute_batch(
                "INSERT INTO hosts (id, hostname, machine_id, enrolled_at, last_seen, workload, tags)
                   VALUES (1, 'web-1', 'm1', '2026-01-01T00:00:00Z', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'web', '{\"role\":\"web\"}'),
                          (2, 'db-1', 'm2', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'db', '{}');
                 INSERT INTO processes (host_id, pid, ppid, name, exe, uid, user, start_time, sha256)
                   VALUES (1, 10, 1, 'nginx', '/usr/sbin/nginx', 0, 'root', '2026-01-01T00:00:00Z', 'ab12');
                 INSERT INTO findings (host_id, kind, severity, subject, status, first_seen, last_seen, opened_at)
                   VALUES (2, 'unexpected_listener', 'high', 'tcp/0.0.0.0:22', 'open', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');
                 INSERT INTO api_tokens (name, role, token_hash, created_at, created_by)
                   VALUES ('admin', 'admin', 'deadbeef', '2026-01-01T00:00:00Z', 'test');",
            )?;
            Ok(())
        })
        .await
        .unwrap();
        s
    }

    /// Every table's row count and the schema's text: what "unchanged" means below.
    async fn fingerprint(s: &SqliteStore) -> Vec<(String, i64)> {
        s.tx(|tx| {
            let names: Vec<String> = tx
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::new();
            for n in names {
                let count: i64 = tx.query_row(&format!("SELECT count(*) FROM \"{n}\""), [], |r| r.get(0))?;
                out.push((n, count));
            }
            let schema: String =
                tx.query_row("SELECT group_concat(sql, ';') FROM sqlite_schema", [], |r| r.get(0))?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            out.push((schema, version));
            Ok(out)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_views_answer_by_their_contract_names() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let r =
            s.query("SELECT hostname, status, open_findings FROM hosts ORDER BY id", terms()).await.unwrap();
        assert_eq!(r.columns, ["hostname", "status", "open_findings"]);
        assert_eq!(
            r.rows,
            vec![
                vec![serde_json::json!("web-1"), "online".into(), 0.into()],
                vec![serde_json::json!("db-1"), "offline".into(), 1.into()]
            ]
        );
        assert!(!r.truncated);
        // A fixed offline_after of the collector's counts too: the host seen just now stays online.
        let fixed = QueryTerms { offline_after: Some(Duration::from_secs(3600)), ..terms() };
        let r = s.query("SELECT status FROM hosts WHERE id = 1", fixed).await.unwrap();
        assert_eq!(r.rows, vec![vec![serde_json::Value::from("online")]]);
        let r = s
            .query(
                "WITH hot AS (SELECT host_id FROM processes WHERE sha256 = 'ab12') \
                 SELECT h.hostname, f.workload FROM hot JOIN hosts h ON h.id = hot.host_id \
                 LEFT JOIN findings f ON f.host_id = h.id;",
                terms(),
            )
            .await
            .unwrap();
        assert_eq!(r.rows, vec![vec![serde_json::Value::from("web-1"), serde_json::Value::Null]]);
        let r = s.query("SELECT json_extract(tags, '$.role') AS role FROM hosts WHERE id = 1", terms()).await;
        assert_eq!(r.unwrap().rows, vec![vec![serde_json::Value::from("web")]]);
    }

    #[tokio::test]
    async fn writes_tables_pragmas_and_attachments_are_refused_and_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let before = fingerprint(&s).await;
        let other = d.path().join("other.db");
        let refused = [
            ("INSERT INTO hosts (hostname, machine_id, enrolled_at) VALUES ('x', 'y', 'z')", "view"),
            ("INSERT INTO main.hosts (hostname, machine_id, enrolled_at) VALUES ('x', 'y', 'z')", "INSERT"),
            ("UPDATE hosts SET hostname = 'x'", "view"),
            ("UPDATE main.hosts SET hostname = 'x'", "UPDATE"),
            ("DELETE FROM findings", "view"),
            ("DELETE FROM main.findings", "DELETE"),
            (
                "REPLACE INTO main.api_tokens (name, role, token_hash, created_at, created_by) VALUES ('a', 'admin', 'x', 'y', 'z')",
                "",
            ),
            ("DROP VIEW hosts", ""),
            ("DROP TABLE main.hosts", ""),
            ("CREATE TABLE t (x)", ""),
            ("CREATE TEMP VIEW v AS SELECT * FROM main.api_tokens", ""),
            (&format!("ATTACH DATABASE '{}' AS o", other.display()), "ATTACH"),
            ("PRAGMA user_version = 7", "PRAGMA user_version"),
            ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
            ("PRAGMA query_only = OFF", "PRAGMA query_only"),
            ("PRAGMA table_info(hosts)", "PRAGMA table_info"),
            ("SELECT * FROM api_tokens", "\"api_tokens\""),
            ("SELECT token_hash FROM main.api_tokens", "\"api_tokens\""),
            ("SELECT key_hash FROM node_keys", "\"node_keys\""),
            ("SELECT * FROM enroll_secrets", "\"enroll_secrets\""),
            ("SELECT * FROM audit_log", "\"audit_log\""),
            ("SELECT * FROM main.hosts", "\"hosts\""),
            ("SELECT sql FROM sqlite_schema", "\"sqlite_master\""),
            ("SELECT * FROM hosts WHERE id IN (SELECT host_id FROM main.node_keys)", "\"node_keys\""),
            ("SELECT load_extension('/tmp/x.so')", "load_extension"),
            ("BEGIN", ""),
            ("VACUUM", ""),
            ("SELECT 1; DELETE FROM hosts", ""),
            ("SELECT 1; SELECT 2", "one statement at a time"),
            ("", "empty"),
        ];
        let mut wrong = Vec::new();
        for (sql, says) in refused {
            match s.query(sql, terms()).await {
                Err(StoreError::Query(msg)) if msg.contains(says) => {}
                other => wrong.push(format!("{sql}: {other:?}")),
            }
        }
        assert!(wrong.is_empty(), "not refused as expected:\n{}", wrong.join("\n"));
        assert!(!other.exists(), "ATTACH created a file");
        assert_eq!(fingerprint(&s).await, before);
        // The views are all still there, and still answer.
        for v in VIEWS {
            s.query(&format!("SELECT * FROM {v} LIMIT 1"), terms()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_query_that_never_ends_is_stopped_and_a_large_one_cut_and_said_so() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let short = QueryTerms { timeout: Duration::from_millis(300), ..terms() };
        let started = Instant::now();
        let e = s
            .query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
                short,
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ran longer than 300ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(60), "stopped only after {:?}", started.elapsed());
        // The connection is good for the next query.
        let few = QueryTerms { max_rows: 5, ..terms() };
        let r = s
            .query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT i FROM n",
                few,
            )
            .await
            .unwrap();
        assert_eq!(r.rows.len(), 5);
        assert!(r.truncated);
        let r = s.query("SELECT 1 AS one", few_rows(1)).await.unwrap();
        assert_eq!((r.rows.len(), r.truncated), (1, false));
        // A value larger than the limit on one is an error, not memory.
        let e = s.query("SELECT zeroblob(100000000)", terms()).await.unwrap_err();
        assert!(matches!(e, StoreError::Query(_)), "{e}");
    }

    fn few_rows(n: u64) -> QueryTerms {
        QueryTerms { max_rows: n, ..terms() }
    }

    #[tokio::test]
    async fn an_in_memory_store_refuses_sql() {
        let s = SqliteStore::open_in_memory().unwrap();
        let e = s.query("SELECT 1", terms()).await.unwrap_err();
        assert!(e.to_string().contains("database file"), "{e}");
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;

    /// Every query docs/queries.md shows runs as written.
    #[tokio::test]
    async fn every_query_in_the_docs_runs() {
        let doc = include_str!("../../../../docs/queries.md");
        let queries: Vec<&str> =
            doc.split("```sql\n").skip(1).filter_map(|b| b.split("```").next()).collect();
        assert!(queries.len() >= 12, "only {} queries in docs/queries.md", queries.len());
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("hw.db")).unwrap();
        let terms = QueryTerms {
            timeout: Duration::from_secs(30),
            max_rows: 100,
            max_bytes: 1 << 20,
            offline_after: None,
        };
        for q in queries {
            if let Err(e) = s.query(q, terms.clone()).await {
                panic!("{q}\n fails: {e}");
            }
        }
    }
}
