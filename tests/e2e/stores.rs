//! The two stores against one contract (issue 17): the same calls on SQLite and on a private
//! PostgreSQL answer the same. Grows with the PostgreSQL store, slice by slice.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{self as proto, AuditEntry};
use hostwatch_server::model::{Host, HostFacts, Silence, SilenceScope};
use hostwatch_server::store::postgres::{PgOptions, PgStore};
use hostwatch_server::store::sqlite::SqliteStore;
use hostwatch_server::store::{Enrollment, NewCredential, SecretRecord, Store, StoreError, TokenRecord};
use time::OffsetDateTime;

use crate::support::postgres::PgServer;

/// A SQLite store in a temporary directory and a PostgreSQL store on a private server, both
/// new: the two sides of every scenario here.
pub(crate) async fn both() -> (tempfile::TempDir, SqliteStore, PgServer, PgStore) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("hw.db")).unwrap();
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE hw");
    let store = PgStore::connect(&pg.url("hw"), &PgOptions::default()).await.unwrap();
    (dir, sqlite, pg, store)
}

/// What the tokens scenario saw, to compare across stores.
#[derive(Debug, PartialEq)]
struct Seen {
    created: TokenRecord,
    found: Option<TokenRecord>,
    unknown: Option<TokenRecord>,
    listed: Vec<TokenRecord>,
    revoked: Option<TokenRecord>,
    again: Option<TokenRecord>,
    missing: Option<TokenRecord>,
    count: u64,
    trail: Vec<(String, String, String, serde_json::Value)>,
}

/// Creates, finds, lists and revokes tokens (twice), then reads the audit trail: the same
/// scenario on a store of either kind (the calls have the same names and shapes on both).
macro_rules! tokens_scenario {
    ($s:expr) => {{
        let s = $s;
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
        assert_eq!(s.count_api_tokens().await.unwrap(), 0);
        let new = NewCredential {
            name: "ci \"bot\"",
            hash: "a1b2",
            created_by: "serve",
            expires_at: Some(at(3600)),
            now: at(0) + time::Duration::milliseconds(250),
        };
        let created = s.create_api_token(&new, "analyst").await.unwrap();
        let other = NewCredential { name: "ops", hash: "c3d4", expires_at: None, now: at(1), ..new };
        s.create_api_token(&other, "admin").await.unwrap();
        let found = s.find_api_token("a1b2").await.unwrap();
        let unknown = s.find_api_token("ffff").await.unwrap();
        let listed = s.api_tokens().await.unwrap();
        let revoked = s.revoke_api_token(created.id, "token:ops#2", at(60)).await.unwrap();
        let again = s.revoke_api_token(created.id, "token:ops#2", at(120)).await.unwrap();
        let missing = s.revoke_api_token(999, "token:ops#2", at(120)).await.unwrap();
        let count = s.count_api_tokens().await.unwrap();
        let entries: Vec<AuditEntry> = s.audit_entries(None, 100).await.unwrap();
        let since: Vec<AuditEntry> = s.audit_entries(Some(at(30)), 100).await.unwrap();
        assert_eq!(since.len(), 1, "only the revocation is at or after 30 s");
        let trail = entries.into_iter().map(|e| (e.actor, e.action, e.target, e.detail)).collect();
        Seen { created, found, unknown, listed, revoked, again, missing, count, trail }
    }};
}

#[tokio::test]
async fn tokens_and_their_audit_trail_are_the_same_on_both_stores() {
    let (_dir, sqlite, pg, store) = both().await;
    let on_sqlite = tokens_scenario!(&sqlite as &dyn Store);
    let on_pg = tokens_scenario!(&store);
    assert_eq!(on_pg, on_sqlite);

    // What the scenario must have seen, on either.
    let s = &on_pg;
    assert_eq!(s.found.as_ref(), Some(&s.created));
    assert_eq!(s.unknown, None);
    assert_eq!(s.listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["ci \"bot\"", "ops"]);
    assert!(s.revoked.as_ref().is_some_and(|t| t.revoked_at.is_some()));
    assert_eq!(s.again.as_ref().and_then(|t| t.revoked_at), s.revoked.as_ref().and_then(|t| t.revoked_at));
    assert_eq!(s.missing, None);
    assert_eq!(s.count, 1, "a revoked token does not count");
    let actions: Vec<&str> = s.trail.iter().map(|(_, a, _, _)| a.as_str()).collect();
    assert_eq!(actions, ["revoke_token", "create_token", "create_token"], "newest first, a revocation once");
    assert_eq!(s.trail[2].3["expires_at"], "2027-01-15T09:00:00.000Z");

    // A second collector on the same database finds the schema in place (migrated once) and the
    // same rows.
    let second = PgStore::connect(&pg.url("hw"), &PgOptions::default()).await.unwrap();
    assert_eq!(second.api_tokens().await.unwrap(), store.api_tokens().await.unwrap());
    // Each of its migrations applied once.
    assert_eq!(pg.psql("hw", "SELECT count(*) FROM schema_migrations"), "2");
}

#[tokio::test]
async fn a_database_url_that_is_not_a_socket_or_not_there_is_refused_with_its_reason() {
    // On the network, TLS only: a URL that turns it off is refused before any connection.
    let tcp =
        PgStore::connect("postgres://hostwatch@127.0.0.1:1/hw?sslmode=disable", &PgOptions::default()).await;
    assert!(
        matches!(&tcp, Err(StoreError::Database(m)) if m.contains("over TLS only")),
        "{:?}",
        tcp.as_ref().err()
    );
    let garbage = PgStore::connect("postgres://[::1", &PgOptions::default()).await;
    assert!(
        matches!(&garbage, Err(StoreError::Database(m)) if m.starts_with("database URL")),
        "{:?}",
        garbage.as_ref().err()
    );
    let dir = tempfile::tempdir().unwrap();
    let nobody = PgStore::connect(
        &format!("postgres://hostwatch@/hw?host={}", dir.path().display()),
        &PgOptions::default(),
    )
    .await;
    assert!(nobody.is_err(), "no server on that socket");
}

/// What the enrollment scenario saw, to compare across stores.
#[derive(Debug, PartialEq)]
struct Enrolled {
    secrets: Vec<SecretRecord>,
    found: Option<SecretRecord>,
    first: Option<Host>,
    by_key: (Option<i64>, Option<i64>, Option<i64>),
    named: Vec<i64>,
    same_machine: (Vec<i64>, Vec<i64>),
    verified: (Option<String>, Option<String>),
    revoked_keys: (Option<u64>, Option<u64>),
    revoked_secret: (Option<SecretRecord>, Option<SecretRecord>),
    counts: (u64, u64),
    missing: Option<Host>,
    trail: Vec<(String, String, String, serde_json::Value)>,
}

/// Two enroll secrets, two hosts under one machine id (never one host taken over by another),
/// a host's keys revoked, a secret revoked (twice): on a store of either kind.
macro_rules! enrollment_scenario {
    ($s:expr) => {{
        let s = $s;
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
        let web: BTreeMap<String, String> = [("role".to_owned(), "web".to_owned())].into();
        let new = NewCredential {
            name: "web fleet",
            hash: "s1",
            created_by: "serve",
            expires_at: None,
            now: at(0),
        };
        let s1 = s.create_enroll_secret(&new, &web).await.unwrap();
        let other = NewCredential { name: "db", hash: "s2", expires_at: Some(at(86_400)), now: at(1), ..new };
        s.create_enroll_secret(&other, &BTreeMap::new()).await.unwrap();
        let mut facts = HostFacts::from(proto::HostFacts::new("web-1", "m1"));
        facts.os = "Debian GNU/Linux 12".to_owned();
        facts.boot_time = Some(at(-3600));
        facts.tags = web.clone();
        facts.reported_tags = [("env".to_owned(), "prod \"eu\"".to_owned())].into();
        let enroll = |key: &'static str, verified: Option<&'static str>, secs: i64| Enrollment {
            facts: &facts,
            agent_version: "0.1.0",
            key_hash: key,
            enroll_secret: s1.id,
            verified_instance: verified,
            now: at(secs),
        };
        let a = s.enroll_host(&enroll("ka", None, 10)).await.unwrap();
        let b = s.enroll_host(&enroll("kb", Some("i-0abc"), 20)).await.unwrap();
        assert_ne!(a, b, "a second enrollment under one machine id is a second host");
        let first = s.host(a).await.unwrap();
        let found = s.find_enroll_secret("s1").await.unwrap();
        let before = s.hosts_with_machine_id("m1", None).await.unwrap();
        let key_a = s.find_node_key("ka").await.unwrap();
        let revoked_keys = (
            s.revoke_host_keys(a, "token:ops#1", at(30)).await.unwrap(),
            s.revoke_host_keys(999, "token:ops#1", at(30)).await.unwrap(),
        );
        let by_key = (key_a, s.find_node_key("ka").await.unwrap(), s.find_node_key("kb").await.unwrap());
        let after = s.hosts_with_machine_id("m1", None).await.unwrap();
        let revoked_secret = (
            s.revoke_enroll_secret(s1.id, "token:ops#1", at(40)).await.unwrap(),
            s.revoke_enroll_secret(s1.id, "token:ops#1", at(50)).await.unwrap(),
        );
        let trail = s
            .audit_entries(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action, e.target, e.detail))
            .collect();
        Enrolled {
            secrets: s.enroll_secrets().await.unwrap(),
            found,
            first,
            by_key,
            named: s.hosts_named("web-1").await.unwrap(),
            same_machine: (before, after),
            verified: (s.verified_instance(a).await.unwrap(), s.verified_instance(b).await.unwrap()),
            revoked_keys,
            revoked_secret,
            counts: (s.count_enroll_secrets().await.unwrap(), s.count_api_tokens().await.unwrap()),
            missing: s.host(999).await.unwrap(),
            trail,
        }
    }};
}

#[tokio::test]
async fn enrollment_secrets_and_node_keys_are_the_same_on_both_stores() {
    let (_dir, sqlite, _pg, store) = both().await;
    let on_sqlite = enrollment_scenario!(&sqlite as &dyn Store);
    let on_pg = enrollment_scenario!(&store);
    assert_eq!(on_pg, on_sqlite);

    let e = &on_pg;
    let first = e.first.as_ref().expect("the first host");
    assert_eq!((first.facts.hostname.as_str(), first.facts.os.as_str()), ("web-1", "Debian GNU/Linux 12"));
    assert_eq!(first.facts.reported_tags["env"], "prod \"eu\"");
    assert_eq!(first.last_seen, None, "enrolled, not reported yet");
    assert_eq!(e.by_key.1, None, "a revoked key lets nobody in");
    assert!(e.by_key.0.is_some() && e.by_key.2.is_some());
    assert_eq!(e.named.len(), 2);
    assert_eq!((e.same_machine.0.len(), e.same_machine.1.len()), (2, 1));
    assert_eq!(e.verified, (None, Some("i-0abc".to_owned())));
    assert_eq!(e.revoked_keys, (Some(1), None));
    assert_eq!(e.revoked_secret.0.as_ref().map(|s| s.hosts), Some(2), "hosts it enrolled, counted");
    assert_eq!(e.counts, (1, 0));
    assert_eq!(e.missing, None);
    let actions: Vec<&str> = e.trail.iter().map(|(_, a, _, _)| a.as_str()).collect();
    assert_eq!(actions, ["revoke_secret", "revoke_host", "create_secret", "create_secret"]);
    assert_eq!(e.trail[1].3, serde_json::json!({ "hostname": "web-1", "keys": 1 }));
}

/// Baselines applied, re-applied unchanged, and changed: the revision every collector watches
/// moves only with a change; on a store of either kind.
macro_rules! baselines_scenario {
    ($s:expr) => {{
        let s = $s;
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
        let mut revisions = vec![s.baselines_revision().await.unwrap()];
        s.put_baseline("web", "[workload]\nname = \"web\"\n", "token:ops#1", at(0)).await.unwrap();
        revisions.push(s.baselines_revision().await.unwrap());
        s.put_baseline("web", "[workload]\nname = \"web\"\n", "token:ops#2", at(10)).await.unwrap();
        revisions.push(s.baselines_revision().await.unwrap());
        s.put_baseline("db", "[workload]\nname = \"db\"\n", "token:ops#1", at(20)).await.unwrap();
        revisions.push(s.baselines_revision().await.unwrap());
        s.put_baseline("web", "[workload]\nname = \"web\" # v2\n", "token:ops#2", at(30)).await.unwrap();
        revisions.push(s.baselines_revision().await.unwrap());
        s.audit("token:ops#2", "apply_baseline", "baseline:web", serde_json::json!({ "bytes": 30 }), at(30))
            .await
            .unwrap();
        let trail: Vec<_> = s.audit_entries(None, 10).await.unwrap().into_iter().map(|e| (e.action, e.detail)).collect();
        (revisions, s.baselines().await.unwrap(), trail)
    }};
}

#[tokio::test]
async fn baselines_and_their_revision_are_the_same_on_both_stores() {
    let (_dir, sqlite, pg, store) = both().await;
    let on_sqlite = baselines_scenario!(&sqlite as &dyn Store);
    let on_pg = baselines_scenario!(&store);
    assert_eq!(on_pg, on_sqlite);
    let (revisions, baselines, trail) = on_pg;
    assert_eq!(revisions, [0, 1, 1, 2, 3], "the same source again moves nothing");
    let names: Vec<(&str, &str)> =
        baselines.iter().map(|b| (b.name.as_str(), b.applied_by.as_str())).collect();
    assert_eq!(names, [("db", "token:ops#1"), ("web", "token:ops#2")]);
    assert!(baselines[1].source.contains("# v2"));
    assert_eq!(trail, [("apply_baseline".to_owned(), serde_json::json!({ "bytes": 30 }))]);
    // A schema altered by hand: the column that no longer reads is an error that names it, not
    // a panic of the collector.
    pg.psql("hw", "ALTER TABLE baselines ALTER COLUMN applied_by TYPE bytea USING applied_by::bytea");
    let altered = store.baselines().await;
    assert!(
        matches!(&altered, Err(StoreError::Corrupt(m)) if m.contains("column 3 (applied_by)")),
        "{altered:?}"
    );
}

/// Silences of a host and of a selector, and a sink's cursor leased by two collectors in turn:
/// on a store of either kind.
macro_rules! triage_scenario {
    ($s:expr) => {{
        let s = $s;
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
        let facts = HostFacts::from(proto::HostFacts::new("web-1", "m1"));
        let secret = s
            .create_enroll_secret(
                &NewCredential { name: "s", hash: "s1", created_by: "serve", expires_at: None, now: at(0) },
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        let host = s
            .enroll_host(&Enrollment {
                facts: &facts,
                agent_version: "0.1.0",
                key_hash: "k1",
                enroll_secret: secret.id,
                verified_instance: None,
                now: at(0),
            })
            .await
            .unwrap();
        let window = |scope, from: i64, to: i64, reason: &str| Silence {
            id: 0,
            scope,
            starts_at: at(from),
            ends_at: at(to),
            reason: reason.to_owned(),
            created_by: "token:ops#1".to_owned(),
        };
        let selector: BTreeMap<String, String> = [("role".to_owned(), "db".to_owned())].into();
        let a = s.create_silence(&window(SilenceScope::Host(host), 0, 600, "patching")).await.unwrap();
        let b = s
            .create_silence(&window(SilenceScope::Selector(selector), 0, 60, "db \"failover\""))
            .await
            .unwrap();
        let silences = (s.silences(None).await.unwrap(), s.silences(Some(at(100))).await.unwrap());
        let leases = vec![
            s.lease_alert_cursor("slack", "collector-a", at(0), at(30)).await.unwrap(),
            s.lease_alert_cursor("slack", "collector-b", at(10), at(40)).await.unwrap(),
            s.lease_alert_cursor("slack", "collector-a", at(20), at(50)).await.unwrap(),
            s.lease_alert_cursor("slack", "collector-b", at(60), at(90)).await.unwrap(),
            s.lease_alert_cursor("slack", "collector-a", at(61), at(91)).await.unwrap(),
        ];
        let advances = vec![
            s.advance_alert_cursor("slack", "collector-a", 5).await.unwrap(),
            s.advance_alert_cursor("slack", "collector-b", 5).await.unwrap(),
            s.advance_alert_cursor("slack", "collector-b", 3).await.unwrap(),
        ];
        let renewed = s.lease_alert_cursor("slack", "collector-b", at(70), at(100)).await.unwrap();
        // The store's own memory is SQLite's alone (PostgreSQL's is its server's): not compared.
        let fleet = (
            s.list_hosts().await.unwrap(),
            hostwatch_server::store::FleetCounts { memory: None, ..s.fleet_counts().await.unwrap() },
        );
        ((a, b), silences, leases, advances, renewed, fleet)
    }};
}

#[tokio::test]
async fn silences_and_leased_alert_cursors_are_the_same_on_both_stores() {
    let (_dir, sqlite, _pg, store) = both().await;
    let on_sqlite = triage_scenario!(&sqlite as &dyn Store);
    let on_pg = triage_scenario!(&store);
    assert_eq!(on_pg, on_sqlite);
    let ((a, b), (all, after), leases, advances, renewed, (hosts, counts)) = on_pg;
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), [b, a], "newest first");
    assert_eq!(after.iter().map(|s| s.id).collect::<Vec<_>>(), [a], "the selector's ended before 100 s");
    assert_eq!(all[0].reason, "db \"failover\"");
    // A holds it; B is refused while A's lease runs; A renews; B takes it once A's has ended.
    assert_eq!(leases, [Some(0), None, Some(0), Some(0), None]);
    // A no longer holds it; B moves it forward, never back.
    assert_eq!(advances, [false, true, false]);
    assert_eq!(renewed, Some(5));
    assert_eq!(hosts.iter().map(|h| h.facts.hostname.as_str()).collect::<Vec<_>>(), ["web-1"]);
    assert!(counts.findings.is_empty());
    assert_eq!(counts.outbox, [("slack".to_owned(), 0)], "the sink's cursor, nothing after it");
}

/// The hosts listing on PostgreSQL, filtered by status with the rule each host is shown with
/// (`Host::status`, the oracle here), by tags exactly and by workload, in pages. The hosts'
/// reports are written by hand (psql): PostgreSQL records reports in a later slice.
#[tokio::test]
async fn hosts_by_status_tags_and_workload_in_pages_on_postgres() {
    use hostwatch_proto::v1::HostStatus;
    use hostwatch_server::store::HostFilter;
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE hw");
    let s = PgStore::connect(&pg.url("hw"), &PgOptions::default()).await.unwrap();
    let at = |secs: i64| OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap();
    let secret = s
        .create_enroll_secret(
            &NewCredential { name: "s", hash: "s1", created_by: "serve", expires_at: None, now: at(0) },
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let tags = [
        r#"{"role":"web","env":"prod"}"#,
        r#"{"role":"db","a\"b":"x"}"#,
        r#"{"role":"web"}"#,
        r#"{}"#,
        r#"{"role":"web"}"#,
        r#"{"role":"web"}"#,
    ];
    for (i, t) in tags.iter().enumerate() {
        let mut facts = HostFacts::from(proto::HostFacts::new(format!("h-{}", i + 1), format!("m{i}")));
        facts.tags = serde_json::from_str(t).unwrap();
        let key = format!("k{i}");
        let e = Enrollment {
            facts: &facts,
            agent_version: "0.1.0",
            key_hash: &key,
            enroll_secret: secret.id,
            verified_instance: None,
            now: at(0),
        };
        assert_eq!(s.enroll_host(&e).await.unwrap(), i as i64 + 1);
    }
    // Now is 12:00:00.500; host 1 reported 10 s ago (interval 10), host 2 40 s ago (interval 20:
    // within 3 intervals), host 3 40 s ago (interval 10), host 4 said goodbye, host 5 is retired,
    // host 6 never reported.
    pg.psql(
        "hw",
        "UPDATE hosts SET workload = 'web', last_seen = '2026-03-01T11:59:50.500Z', interval_secs = 10 WHERE id IN (1, 4, 5); \
         UPDATE hosts SET workload = 'db', last_seen = '2026-03-01T11:59:20.500Z', interval_secs = 20 WHERE id = 2; \
         UPDATE hosts SET workload = 'web', last_seen = '2026-03-01T11:59:20.500Z', interval_secs = 10 WHERE id = 3; \
         UPDATE hosts SET goodbye = 'stopped by systemd' WHERE id = 4; \
         UPDATE hosts SET retired_at = '2026-02-01T00:00:00Z' WHERE id = 5;",
    );
    let now = hostwatch_proto::v1::timestamp::parse("2026-03-01T12:00:00.500Z").unwrap();
    let list = |f: HostFilter| {
        let s = s.clone();
        async move {
            let f = HostFilter { now: Some(now), limit: 100, ..f };
            s.hosts_page(&f).await.unwrap().items.into_iter().map(|h| h.id).collect::<Vec<_>>()
        }
    };
    let of = |statuses: &[HostStatus]| HostFilter { statuses: statuses.to_vec(), ..HostFilter::default() };
    assert_eq!(list(of(&[HostStatus::Online])).await, [1, 2]);
    assert_eq!(list(of(&[HostStatus::Offline])).await, [3, 6]);
    assert_eq!(list(HostFilter::default()).await, [1, 2, 3, 4, 6], "retired left out");
    let every = s.list_hosts().await.unwrap();
    assert_eq!(every.len(), 6);
    for offline_after in [None, Some(std::time::Duration::from_secs(35))] {
        for status in [HostStatus::Online, HostStatus::Offline, HostStatus::Stopped, HostStatus::Retired] {
            let want: Vec<i64> =
                every.iter().filter(|h| h.status(now, offline_after) == status).map(|h| h.id).collect();
            assert_eq!(
                list(HostFilter { offline_after, ..of(&[status]) }).await,
                want,
                "{status:?} {offline_after:?}"
            );
        }
    }
    let tagged = |t: &[(&str, &str)]| HostFilter {
        tags: t.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..HostFilter::default()
    };
    assert_eq!(list(tagged(&[("role", "web")])).await, [1, 3, 6]);
    assert_eq!(list(tagged(&[("role", "web"), ("env", "prod")])).await, [1]);
    assert_eq!(list(tagged(&[("a\"b", "x")])).await, [2]);
    assert_eq!(list(HostFilter { workload: Some("db".into()), ..HostFilter::default() }).await, [2]);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .hosts_page(&HostFilter { after: after.clone(), limit: 2, ..HostFilter::default() })
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|h| h.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 6]);
    let bad = s.hosts_page(&HostFilter { after: Some("x".into()), limit: 2, ..HostFilter::default() }).await;
    assert!(matches!(bad, Err(StoreError::Query(m)) if m.contains("cursor \"x\"")));
}

/// A database on the network is reached over TLS only, its certificate verified against the CA
/// given and for the name the URL gives; every connection of the store is encrypted.
#[tokio::test]
async fn a_database_on_the_network_is_reached_over_verified_tls_only() {
    use crate::tls::Ca;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "db");
    let (cert, key, _) =
        ca.issue(dir.path(), "db", &["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let pg = PgServer::start_tls(&cert, &key);
    pg.psql("postgres", "CREATE DATABASE hw");
    let url = format!("postgres://{}@127.0.0.1:{}/hw", crate::support::postgres::USER, pg.port());
    let trusted = PgOptions { ca_file: Some(ca.pem.clone()), ..PgOptions::default() };
    let store = PgStore::connect(&url, &trusted).await.unwrap();
    assert_eq!(store.baselines_revision().await.unwrap(), 0);
    let seen = pg.psql(
        "hw",
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.client_addr IS NOT NULL",
    );
    let (clear, all) = seen.split_once('|').unwrap();
    assert_eq!(clear, "0", "every network connection encrypted: {seen}");
    assert!(all.parse::<u32>().unwrap() >= 1, "{seen}");

    // Signed by another CA: refused, saying why.
    let other = Ca::new(dir.path(), "other");
    let stranger = PgOptions { ca_file: Some(other.pem.clone()), ..PgOptions::default() };
    let e = PgStore::connect(&url, &stranger).await.err().expect("an unknown issuer is refused");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // A name the certificate does not hold, at the certified address (`hostaddr`: no name is
    // looked up; the name is what the certificate must hold).
    let by_name = format!(
        "postgres://{}@db.example.internal:{}/hw?hostaddr=127.0.0.1",
        crate::support::postgres::USER,
        pg.port()
    );
    let e = PgStore::connect(&by_name, &trusted).await.err().expect("a name not certified is refused");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // A CA file that is not one: said with its path.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = PgStore::connect(&url, &PgOptions { ca_file: Some(junk), ..PgOptions::default() })
        .await
        .err()
        .expect("a CA file without a certificate is refused");
    assert!(e.to_string().contains("junk.pem"), "{e}");
}
