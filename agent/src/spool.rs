//! The outbox: every report is written here before it is sent, and deleted once the collector
//! has it, so nothing is lost to a collector that is down or an agent that restarts.
//!
//! One file per report in `STATE_DIR/spool/`, named by a counter so that order survives restarts.
//! The spool is bounded in bytes (default 64 MiB): a report that does not fit pushes out the
//! oldest, and the number pushed out is kept in `spool/lost` until a report saying so reaches the
//! collector (which files data_lost). A report that cannot be written (a full disk) counts as
//! lost the same way. Nothing is dropped without being counted.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;

use crate::identity::{StateError, write_private};

#[derive(Debug)]
struct Item {
    id: u64,
    size: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    items: VecDeque<Item>,
    total: u64,
    next_id: u64,
    lost: u64,
}

const LOST: &str = "lost";

impl Spool {
    /// Opens (creating it) the spool in `dir`, with what an earlier run left in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, StateError> {
        let err = |action, source| StateError { action, path: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(|e| err("create", e))?;
        let mut items: Vec<Item> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| err("read", e))?.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            items.push(Item { id, size });
        }
        items.sort_by_key(|i| i.id);
        let lost = fs::read_to_string(dir.join(LOST)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let total = items.iter().map(|i| i.size).sum();
        let next_id = items.last().map_or(1, |i| i.id + 1);
        Ok(Spool { dir: dir.to_owned(), max_bytes, items: items.into(), total, next_id, lost })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.json"))
    }

    /// Appends a report, pushing out the oldest where the bound requires. Returns how many reports
    /// were dropped to make room (or this one, if it could not be written).
    pub fn push(&mut self, report: &proto::Report) -> u64 {
        let bytes = match serde_json::to_vec(report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a report; it is lost");
                self.count_lost(1);
                return 1;
            }
        };
        let size = bytes.len() as u64;
        let mut dropped = 0;
        if size > self.max_bytes {
            tracing::error!(size, max = self.max_bytes, "a report larger than the whole spool is lost");
            self.count_lost(1);
            return 1;
        }
        while self.total + size > self.max_bytes {
            let Some(old) = self.items.pop_front() else { break };
            let _ = fs::remove_file(self.path(old.id));
            self.total -= old.size;
            dropped += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        match write_private(&self.path(id), &bytes) {
            Ok(()) => {
                self.items.push_back(Item { id, size });
                self.total += size;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool a report (disk full?); it is lost");
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "spool full: oldest reports dropped");
            self.count_lost(dropped);
        }
        dropped
    }

    /// The oldest report, with the count of reports lost so far written into it.
    pub fn front(&self) -> Option<(u64, Vec<u8>)> {
        let item = self.items.front()?;
        let bytes = fs::read(self.path(item.id)).ok()?;
        if self.lost == 0 {
            return Some((item.id, bytes));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["lost"] = self.lost.into();
        Some((item.id, serde_json::to_vec(&v).ok()?))
    }

    /// The collector has report `id` (and with it the count of lost reports it carried).
    pub fn delivered(&mut self, id: u64) {
        if let Some(pos) = self.items.iter().position(|i| i.id == id) {
            if let Some(item) = self.items.remove(pos) {
                self.total -= item.size;
            }
            let _ = fs::remove_file(self.path(id));
        }
        if self.lost > 0 {
            self.lost = 0;
            let _ = fs::remove_file(self.dir.join(LOST));
        }
    }

    /// Drops every report (the collector asked for a snapshot, or the agent enrolled anew).
    pub fn clear(&mut self) {
        for item in self.items.drain(..) {
            let _ = fs::remove_file(self.dir.join(format!("{:020}.json", item.id)));
        }
        self.total = 0;
    }

    /// A report the collector refused for good was dropped: it is lost like one pushed out.
    pub fn count_refused(&mut self) {
        self.count_lost(1);
    }

    fn count_lost(&mut self, n: u64) {
        self.lost += n;
        let _ = write_private(&self.dir.join(LOST), self.lost.to_string().as_bytes());
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Reports dropped and not yet reported as such.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn report(seq: u64, pad: usize) -> proto::Report {
        let now = OffsetDateTime::now_utc();
        proto::Report {
            session: 9,
            seq,
            sent_at: now,
            host: proto::HostFacts {
                hostname: "x".repeat(pad.max(1)),
                machine_id: "m".into(),
                os: String::new(),
                kernel: String::new(),
                arch: String::new(),
                boot_time: None,
                tags: Default::default(),
                cloud: None,
            },
            agent: proto::AgentStatus {
                version: "0".into(),
                interval_secs: 10,
                started_at: now,
                coverage: proto::Coverage::full(),
                stats: None,
            },
            snapshot: None,
            delta: None,
            lost: 0,
            goodbye: None,
        }
    }

    fn seq_of(bytes: &[u8]) -> u64 {
        serde_json::from_slice::<proto::Report>(bytes).unwrap().seq
    }

    #[test]
    fn in_order_across_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        for seq in 1..=3 {
            assert_eq!(s.push(&report(seq, 10)), 0);
        }
        let (id, bytes) = s.front().unwrap();
        assert_eq!(seq_of(&bytes), 1);
        s.delivered(id);
        drop(s);
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        s.push(&report(4, 10));
        let mut seen = Vec::new();
        while let Some((id, bytes)) = s.front() {
            seen.push(seq_of(&bytes));
            s.delivered(id);
        }
        assert_eq!(seen, [2, 3, 4]);
        assert_eq!((s.bytes(), s.len()), (0, 0));
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&report(1, 500)).unwrap().len() as u64;
        let mut s = Spool::open(d.path(), one * 3 + 10).unwrap();
        for seq in 1..=5 {
            s.push(&report(seq, 500));
        }
        assert_eq!((s.len(), s.lost()), (3, 2));
        // The count survives a restart and rides on the next report sent.
        drop(s);
        let mut s = Spool::open(d.path(), one * 3 + 10).unwrap();
        assert_eq!(s.lost(), 2);
        let (id, bytes) = s.front().unwrap();
        let r: proto::Report = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((r.seq, r.lost), (3, 2));
        s.delivered(id);
        assert_eq!(s.lost(), 0, "reported once");
        let (_, bytes) = s.front().unwrap();
        assert_eq!(serde_json::from_slice::<proto::Report>(&bytes).unwrap().lost, 0);
        // A report bigger than the whole spool is lost, and counted.
        let mut tiny = Spool::open(&d.path().join("tiny"), 10).unwrap();
        assert_eq!(tiny.push(&report(1, 10)), 1);
        assert_eq!(tiny.lost(), 1);
    }
}
