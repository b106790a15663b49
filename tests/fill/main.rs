//! `hostwatch-fill`: fills a collector's SQLite store with a fleet, through the store's own code
//! (the rows, keys and indexes are exactly what reports make), for the fleet-query figures
//! (BENCHMARKS.md, issue 16; `bench/fleet_queries.py`).
//!
//! Every host enrolls, sends a snapshot of `--processes` processes, `--listeners` listeners and
//! `--connections` connections (the load generator's simulated hosts, with a fleet's mix of
//! peers), then `--deltas` deltas spread over the last day (each: two processes end and two
//! start, five connections close and five others open), so that the history holds a day of
//! events; the engine's verdict is stood in for by a few findings a host (one unexpected process
//! each, an unexpected listener on every tenth, a critical suspicious process on the hosts that
//! run the planted miner). What the incident questions look for is planted at known rates:
//! - `kworkerd` at `/tmp/.x/kworkerd`, SHA-256 [`MINER_SHA256`], on every hundredth host;
//! - SSH on 0.0.0.0:22 on every twentieth host (the others on their private address).
//!
//! ```text
//! hostwatch-fill --db PATH-OR-postgres://URL [--hosts 10000] [--processes 300] [--listeners 50] [--connections 200] [--deltas 20]
//! ```
//! It refuses a database that already has hosts. Prints a JSON summary on stdout.

// The load generator's own constructor of hosts is not used here.
#[path = "../load/host.rs"]
#[allow(dead_code)]
mod host;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hostwatch_proto::v1::{self as proto, FindingKind, Severity};
use hostwatch_server::model::{HostFacts, Observation, ReportRecord};
use hostwatch_server::store::postgres::{PgOptions, PgStore};
use hostwatch_server::store::sqlite::SqliteStore;
use hostwatch_server::store::{Enrollment, NewCredential, ReportTerms, Store, Verdict};
use time::OffsetDateTime;

use host::{Host, Shape};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The planted miner's hash: `hostwatch ps --sha256` of it answers every hundredth host.
pub const MINER_SHA256: &str = "5e2d1ab7c0ffee00deadbeef5e2d1ab7c0ffee00deadbeef5e2d1ab7c0ffee00";

/// Hosts written at once: enough that the store's writer commits many together.
const IN_FLIGHT: usize = 48;

struct Args {
    db: PathBuf,
    hosts: usize,
    shape: Shape,
    deltas: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        db: PathBuf::new(),
        hosts: 10_000,
        shape: Shape { processes: 300, listeners: 50, connections: 200, mixed_remotes: true },
        deltas: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--db" => a.db = PathBuf::from(value()?),
            "--hosts" => a.hosts = number(value()?)?,
            "--processes" => a.shape.processes = number(value()?)?,
            "--listeners" => a.shape.listeners = number(value()?)?,
            "--connections" => a.shape.connections = number(value()?)?,
            "--deltas" => a.deltas = number(value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.db.as_os_str().is_empty() {
        return Err("--db PATH is needed".to_owned());
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hostwatch-fill: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostwatch-fill: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("hostwatch-fill: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let began = Instant::now();
    let url = args.db.to_string_lossy().into_owned();
    let store: Arc<dyn Store> = if url.starts_with("postgres://") {
        Arc::new(PgStore::connect(&url, &PgOptions::default()).await.map_err(|e| format!("{url}: {e}"))?)
    } else {
        Arc::new(SqliteStore::open(&args.db).map_err(|e| format!("{}: {e}", args.db.display()))?)
    };
    if !store.list_hosts().await.map_err(|e| e.to_string())?.is_empty() {
        return Err(format!("{} already has hosts; give a new file", args.db.display()));
    }
    let now = OffsetDateTime::now_utc();
    let new = NewCredential {
        name: "fill",
        hash: "fill-secret",
        created_by: "hostwatch-fill",
        expires_at: None,
        now,
    };
    let secret = store.create_enroll_secret(&new, &Default::default()).await.map_err(|e| e.to_string())?.id;
    let args = Arc::new(args);
    let mut next = 0usize;
    let mut running = tokio::task::JoinSet::new();
    let mut done = 0usize;
    while done < args.hosts {
        while running.len() < IN_FLIGHT && next < args.hosts {
            let (store, args) = (store.clone(), args.clone());
            let index = next;
            running.spawn(async move { fill_host(store.as_ref(), &args, index, secret, now).await });
            next += 1;
        }
        match running.join_next().await {
            Some(Ok(Ok(()))) => done += 1,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(format!("a host's task failed: {e}")),
            None => break,
        }
        if done.is_multiple_of(1000) {
            eprintln!("hostwatch-fill: {done} hosts in {:.0?}", began.elapsed());
        }
    }
    let counts = store
        .query(
            "SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM processes), (SELECT count(*) FROM listeners), \
             (SELECT count(*) FROM connections), (SELECT count(*) FROM process_events), \
             (SELECT count(*) FROM socket_events), (SELECT count(*) FROM findings)",
            hostwatch_server::store::QueryTerms {
                timeout: std::time::Duration::from_secs(600),
                max_rows: 1,
                max_bytes: 1 << 20,
                offline_after: None,
            },
        )
        .await;
    // On PostgreSQL read-only SQL needs the analysts' role, which the fill does not have: the
    // counts are then the caller's to read.
    let row = match counts {
        Ok(c) => c.rows.first().cloned().unwrap_or_default(),
        Err(e) => {
            eprintln!("hostwatch-fill: filled; no counts ({e})");
            Vec::new()
        }
    };
    let names =
        ["hosts", "processes", "listeners", "connections", "process_events", "socket_events", "findings"];
    let mut summary = serde_json::Map::new();
    for (n, v) in names.iter().zip(row) {
        summary.insert((*n).to_owned(), v);
    }
    summary.insert("seconds".to_owned(), (began.elapsed().as_secs_f64().round()).into());
    summary.insert("miner_sha256".to_owned(), MINER_SHA256.into());
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}

/// One host: enrolled, its snapshot, a day of deltas, and its findings.
async fn fill_host(
    store: &dyn Store,
    args: &Args,
    index: usize,
    secret: i64,
    now: OffsetDateTime,
) -> Result<(), String> {
    let err = |what: &str, e: hostwatch_server::store::StoreError| format!("host {index}: {what}: {e}");
    let mut host = Host::new(index, args.shape);
    let private = IpAddr::V4(Ipv4Addr::new(10, (index >> 16) as u8, (index >> 8) as u8, index as u8));
    // SSH on every interface on one host in twenty; on its private address on the others.
    if !index.is_multiple_of(20)
        && let Some(ssh) = host.listeners.iter_mut().find(|l| l.port == 22)
    {
        ssh.address = private;
    }
    let miner = index.is_multiple_of(100);
    if miner {
        let mut p = host.process();
        p.name = "kworkerd".to_owned();
        p.exe = Some("/tmp/.x/kworkerd".to_owned());
        p.cmdline = vec!["/tmp/.x/kworkerd".to_owned(), "-o".to_owned(), "pool.example:3333".to_owned()];
        p.sha256 = Some(MINER_SHA256.to_owned());
        host.processes.push(p);
    }
    let facts = host.facts();
    let role = facts.tags.get("role").cloned().unwrap_or_default();
    let model_facts = HostFacts::from(facts.clone());
    let key = format!("fill-key-{index}");
    let first = now - time::Duration::days(2);
    let id = store
        .enroll_host(&Enrollment {
            facts: &model_facts,
            agent_version: "0.0.0-fill",
            key_hash: &key,
            enroll_secret: secret,
            verified_instance: None,
            now: first,
        })
        .await
        .map_err(|e| err("enroll", e))?;
    let session = index as u64 + 1;
    let report =
        |seq: u64, at: OffsetDateTime, snapshot: Option<proto::Snapshot>, delta: Option<proto::Delta>| {
            ReportRecord::from(proto::Report {
                session,
                seq,
                sent_at: at,
                host: facts.clone(),
                agent: proto::AgentStatus::new("0.0.0-fill", 10, first),
                snapshot,
                delta,
                lost: 0,
                goodbye: None,
            })
        };
    let snapshot = report(1, first, Some(host.snapshot()), None);
    store.record_report(id, snapshot, first, ReportTerms::default()).await.map_err(|e| err("snapshot", e))?;
    // The deltas spread over the last day, the last a few seconds ago.
    let day = 86_400i64;
    for k in 0..args.deltas {
        let offset = day - (k as i64 + 1) * day / args.deltas.max(1) as i64 + host.rng.below(60) as i64;
        let at = now - time::Duration::seconds(offset.max(1));
        let delta = host.delta(at, 5);
        let r = report(k as u64 + 2, at, None, Some(delta));
        store.record_report(id, r, at, ReportTerms::default()).await.map_err(|e| err("delta", e))?;
    }
    // What the engine would file, stood in for.
    let exe = host.processes.first().and_then(|p| p.exe.clone()).unwrap_or_default();
    let mut observed = vec![observation(FindingKind::UnexpectedProcess, None, Severity::Medium, &exe)];
    if index.is_multiple_of(10) {
        observed.push(observation(
            FindingKind::UnexpectedListener,
            None,
            Severity::High,
            "tcp/0.0.0.0:10001",
        ));
    }
    if miner {
        observed.push(observation(
            FindingKind::SuspiciousProcess,
            Some("exe-in-temp"),
            Severity::Critical,
            "/tmp/.x/kworkerd",
        ));
    }
    let verdict = Verdict { workload: Some(role), observed, ..Verdict::default() };
    store.apply_verdict(id, verdict, u32::MAX, now).await.map_err(|e| err("findings", e))?;
    Ok(())
}

fn observation(kind: FindingKind, rule: Option<&str>, severity: Severity, subject: &str) -> Observation {
    Observation {
        kind,
        rule: rule.map(str::to_owned),
        severity,
        subject: subject.to_owned(),
        detail: serde_json::json!({ "exe": subject }),
        occurrences: 1,
        transient: false,
    }
}
