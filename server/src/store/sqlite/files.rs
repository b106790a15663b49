//! Watched files: the history of changes (`file_changes`) and the latest state of each path
//! that changed (`files`).
//!
//! Invariant: both are written in the transaction that applies the report carrying the changes,
//! so a replayed report (not applied again) adds nothing.

use hostwatch_proto::v1 as proto;
use rusqlite::{Transaction, params};

use super::listing::{History, history_page, history_where};
use super::{parse_enum, parse_ts, to_json, ts};
use crate::store::{HistoryFilter, Page, Result, StoreError};

/// Records `changes` in the order the agent saw them.
pub(super) fn record(tx: &Transaction<'_>, host_id: i64, changes: &[proto::FileChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO file_changes (host_id, at, path, change, origin, from_path, old_sha256, new_sha256, \
         package, package_version, package_matches, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let mut put = tx.prepare_cached(
        "INSERT INTO files (host_id, path, kind, mode, uid, gid, size, mtime, sha256, target, changed_at, metadata_only, inode) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT (host_id, path) DO UPDATE SET kind = excluded.kind, mode = excluded.mode, uid = excluded.uid, \
         gid = excluded.gid, size = excluded.size, mtime = excluded.mtime, sha256 = excluded.sha256, \
         target = excluded.target, changed_at = excluded.changed_at, metadata_only = excluded.metadata_only, \
         inode = excluded.inode",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM files WHERE host_id = ?1 AND path = ?2")?;
    for c in changes {
        let package = c.package.as_ref();
        insert.execute(params![
            host_id,
            ts(c.at),
            c.path,
            c.change.as_str(),
            c.origin.as_str(),
            c.from_path,
            c.old.as_ref().and_then(|s| s.sha256.as_deref()),
            c.new.as_ref().and_then(|s| s.sha256.as_deref()),
            package.map(|p| p.name.as_str()),
            package.and_then(|p| p.version.as_deref()),
            package.map(|p| p.matches),
            to_json(c),
        ])?;
        if let Some(from) = &c.from_path {
            delete.execute(params![host_id, from])?;
        }
        match &c.new {
            Some(s) => {
                put.execute(params![
                    host_id,
                    c.path,
                    s.kind.as_str(),
                    s.mode,
                    s.uid,
                    s.gid,
                    i64::try_from(s.size).unwrap_or(i64::MAX),
                    ts(s.mtime),
                    s.sha256,
                    s.target,
                    ts(c.at),
                    s.metadata_only,
                    i64::try_from(s.inode).unwrap_or(i64::MAX),
                ])?;
            }
            None => {
                delete.execute(params![host_id, c.path])?;
            }
        }
    }
    Ok(())
}

/// Changes newest first, as `hostwatch files` lists them.
pub(super) fn events(tx: &Transaction<'_>, f: &HistoryFilter) -> Result<Page<proto::FileEvent>> {
    let (clause, args) = history_where(tx, f, History::Files)?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT e.id, e.host_id, h.hostname, e.detail, e.at FROM file_changes e JOIN hosts h ON h.id = e.host_id{clause}"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (id, detail): (i64, String) = (r.get(0)?, r.get(3)?);
        let change: proto::FileChange = serde_json::from_str(&detail)
            .map_err(|e| StoreError::Corrupt(format!("file change {id}: {e}")))?;
        let at = parse_ts(&r.get::<_, String>(4)?)?;
        out.push((at, proto::FileEvent { id, host_id: r.get(1)?, hostname: r.get(2)?, change }));
    }
    let page = history_page(out, f, |(at, e)| (e.id, *at));
    Ok(Page { items: page.items.into_iter().map(|(_, e)| e).collect(), next: page.next })
}

/// The latest state of each changed path, most recently changed first.
pub(super) fn current(tx: &Transaction<'_>, f: &HistoryFilter) -> Result<Page<proto::FileRecord>> {
    let (clause, args) = history_where(tx, f, History::Files)?;
    // As a history table (alias `e`, time `at`, key `id`), so that the filters and pages are
    // the same.
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT e.host_id, h.hostname, e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.sha256, e.target, \
         e.metadata_only, e.at, e.inode, e.id FROM (SELECT *, changed_at AS at, rowid AS id FROM files) e JOIN hosts h ON h.id = e.host_id{clause}"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let size: i64 = r.get(7)?;
        let id: i64 = r.get(14)?;
        out.push((
            id,
            proto::FileRecord {
                host_id: r.get(0)?,
                hostname: r.get(1)?,
                path: r.get(2)?,
                state: proto::FileState {
                    kind: parse_enum(&r.get::<_, String>(3)?)?,
                    mode: r.get(4)?,
                    uid: r.get(5)?,
                    gid: r.get(6)?,
                    size: u64::try_from(size).unwrap_or_default(),
                    mtime: parse_ts(&r.get::<_, String>(8)?)?,
                    inode: u64::try_from(r.get::<_, i64>(13)?).unwrap_or_default(),
                    sha256: r.get(9)?,
                    metadata_only: r.get(11)?,
                    target: r.get(10)?,
                },
                changed_at: parse_ts(&r.get::<_, String>(12)?)?,
            },
        ));
    }
    let page = history_page(out, f, |(id, r)| (*id, r.changed_at));
    Ok(Page { items: page.items.into_iter().map(|(_, r)| r).collect(), next: page.next })
}
