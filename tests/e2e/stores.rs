//! The two stores against one contract (issue 17): the same calls on SQLite and on a private
//! PostgreSQL answer the same. Grows with the PostgreSQL store, slice by slice.

use hostwatch_proto::v1::AuditEntry;
use hostwatch_server::store::postgres::PgStore;
use hostwatch_server::store::sqlite::SqliteStore;
use hostwatch_server::store::{NewCredential, Store, StoreError, TokenRecord};
use time::OffsetDateTime;

use crate::support::postgres::PgServer;

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
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("hw.db")).unwrap();
    let on_sqlite = tokens_scenario!(&sqlite as &dyn Store);

    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE hw");
    let store = PgStore::connect(&pg.url("hw")).await.unwrap();
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
    let second = PgStore::connect(&pg.url("hw")).await.unwrap();
    assert_eq!(second.api_tokens().await.unwrap(), store.api_tokens().await.unwrap());
    assert_eq!(pg.psql("hw", "SELECT count(*) FROM schema_migrations"), "1");
}

#[tokio::test]
async fn a_database_url_that_is_not_a_socket_or_not_there_is_refused_with_its_reason() {
    let tcp = PgStore::connect("postgres://hostwatch@db.example.internal/hw").await;
    assert!(
        matches!(&tcp, Err(StoreError::Database(m)) if m.contains("only a Unix socket")),
        "{:?}",
        tcp.as_ref().err()
    );
    let garbage = PgStore::connect("postgres://[::1").await;
    assert!(
        matches!(&garbage, Err(StoreError::Database(m)) if m.starts_with("database URL")),
        "{:?}",
        garbage.as_ref().err()
    );
    let dir = tempfile::tempdir().unwrap();
    let nobody = PgStore::connect(&format!("postgres://hostwatch@/hw?host={}", dir.path().display())).await;
    assert!(nobody.is_err(), "no server on that socket");
}
