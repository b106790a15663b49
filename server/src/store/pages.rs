//! Keyset pages and their cursors, the same for every store: a cursor is the key of the last row
//! given (numbers joined by dots for state listings, `AT/ID` for history, `RANK/LAST_SEEN/ID` for
//! findings), and the next page is what sorts after it. One more row than asked is read, to know
//! whether there is a next page.

use hostwatch_proto::v1::timestamp;
use time::OffsetDateTime;

use crate::store::{Page, Result, StoreError};

/// The page of `rows` (read with one more than `limit`), the next cursor from the last given.
pub fn paged<T>(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(key) } else { None };
    Page { items: rows, next }
}

/// A cursor no listing gave, said in the person's terms.
pub fn bad_cursor(c: &str) -> StoreError {
    StoreError::Query(format!("cursor {c:?} is not one this listing gave; start again without it"))
}

/// A state cursor: the numbers of a row's key, joined by dots; `n` of them.
pub fn state_cursor(c: &str, n: usize) -> Result<Vec<i64>> {
    let key: Vec<i64> =
        c.split('.').map(str::parse).collect::<std::result::Result<_, _>>().map_err(|_| bad_cursor(c))?;
    if key.len() != n {
        return Err(bad_cursor(c));
    }
    Ok(key)
}

/// A history cursor, `AT/ID`.
pub fn history_cursor(c: &str) -> Result<(OffsetDateTime, i64)> {
    let (at, id) = c.rsplit_once('/').ok_or_else(|| bad_cursor(c))?;
    let at = timestamp::parse(at).map_err(|_| bad_cursor(c))?;
    Ok((at, id.parse().map_err(|_| bad_cursor(c))?))
}

/// The page of history rows (newest first), its cursor `AT/ID` from `key`.
pub fn history_page<T>(rows: Vec<T>, limit: u32, key: impl Fn(&T) -> (i64, OffsetDateTime)) -> Page<T> {
    paged(rows, limit.max(1), |r| {
        let (id, at) = key(r);
        format!("{}/{id}", timestamp::format(at))
    })
}

/// A findings cursor, `RANK/LAST_SEEN/ID`.
pub fn findings_cursor(c: &str) -> Result<(i64, OffsetDateTime, i64)> {
    let mut parts = c.splitn(3, '/');
    let rank: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad_cursor(c))?;
    let seen = parts.next().and_then(|p| timestamp::parse(p).ok()).ok_or_else(|| bad_cursor(c))?;
    let id: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad_cursor(c))?;
    Ok((rank, seen, id))
}

/// The cursor of a finding in the findings' order.
pub fn finding_cursor(f: &crate::model::Finding) -> String {
    format!("{}/{}/{}", crate::store::severity_rank(f.severity), timestamp::format(f.last_seen), f.id)
}
