//! The outbox: every report is written here before it is sent, and deleted once the collector
//! has it, so nothing is lost to a collector that is down or an agent that restarts.
//!
//! One file per report in `STATE_DIR/spool/`, named by a counter so that order survives restarts.
//! The spool is bounded in bytes (default 64 MiB): a report that does not fit pushes out the
//! oldest; one larger than the whole bound is kept alone (so that a host whose snapshot outgrew a
//! small bound still reports, with the collector up). A report that cannot be written (a full
//! disk) and one the collector refused for good are lost the same way. Nothing is dropped without being
//! counted: the places of lost reports in the spool's order are kept in `spool/lost` (ranges of
//! ids, one `from-to` a line), and each report sent says how many were lost *before it*, so the
//! count matches the gap in sequence numbers the collector sees (which files data_lost).

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;

use std::io::{BufWriter, Seek, Write};

use crate::identity::{StateError, write_private, write_private_with};

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
    /// Ids of reports lost and not yet reported as such: sorted, disjoint, inclusive ranges.
    lost: Vec<(u64, u64)>,
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
            // What a crash left half-written never made it into the spool.
            if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            items.push(Item { id, size });
        }
        items.sort_by_key(|i| i.id);
        let lost = read_lost(&dir.join(LOST));
        let total = items.iter().map(|i| i.size).sum();
        let next_id = items.last().map(|i| i.id).max(lost.last().map(|r| r.1)).map_or(1, |id| id + 1);
        Ok(Spool { dir: dir.to_owned(), max_bytes, items: items.into(), total, next_id, lost })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.json"))
    }

    /// Appends a report, pushing out the oldest where the bound requires. Returns how many reports
    /// were lost (pushed out to make room, or this one if it could not be written).
    pub fn push(&mut self, report: &proto::Report) -> u64 {
        // Every report takes its place in the order, written or not.
        let id = self.next_id;
        self.next_id += 1;
        let path = self.path(id);
        // Streamed to disk: a snapshot of a busy host is megabytes, never held whole in memory
        // (the file may briefly overstep the bound until the oldest are pushed out).
        let mut size = 0;
        let written = write_private_with(&path, |f| {
            let mut w = BufWriter::new(f);
            serde_json::to_writer(&mut w, report).map_err(std::io::Error::other)?;
            w.flush()?;
            size = w.get_mut().stream_position()?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::error!(seq = report.seq, error = %e, "cannot spool a report (disk full?); it is lost");
            self.lose(&[id]);
            return 1;
        }
        if size > self.max_bytes {
            // Dropping it would lose every snapshot of a host whose snapshot outgrew the bound,
            // even with the collector up: it is kept, alone, the bound overstepped by one report.
            tracing::warn!(
                seq = report.seq,
                size,
                max = self.max_bytes,
                "a report larger than the whole spool is kept alone in it; raise spool_max_bytes"
            );
        }
        let mut lost = Vec::new();
        while self.total + size > self.max_bytes {
            let Some(old) = self.items.pop_front() else { break };
            let _ = fs::remove_file(self.path(old.id));
            self.total -= old.size;
            lost.push(old.id);
        }
        if !lost.is_empty() {
            tracing::warn!(dropped = lost.len(), "spool full: oldest reports dropped");
        }
        self.items.push_back(Item { id, size });
        self.total += size;
        self.lose(&lost);
        lost.len() as u64
    }

    /// The oldest report, with the count of reports lost before it written into it.
    pub fn front(&self) -> Option<(u64, Vec<u8>)> {
        let item = self.items.front()?;
        let bytes = fs::read(self.path(item.id)).ok()?;
        let lost = self.lost_before(item.id);
        if lost == 0 {
            return Some((item.id, bytes));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["lost"] = lost.into();
        Some((item.id, serde_json::to_vec(&v).ok()?))
    }

    /// The collector has report `id`, and with it the count of lost reports before it.
    pub fn delivered(&mut self, id: u64) {
        self.remove(id);
        // The file is rewritten only when a range was reported, not at every delivery.
        let mut changed = false;
        self.lost.retain_mut(|r| {
            if r.0 <= id {
                changed = true;
                r.0 = id + 1;
            }
            r.0 <= r.1
        });
        if changed {
            self.save_lost();
        }
    }

    /// The collector will never take report `id` (it refused it for good): dropped and lost. The
    /// count it carried did not arrive either, and rides on the next report.
    pub fn refused(&mut self, id: u64) {
        self.remove(id);
        self.lose(&[id]);
    }

    fn remove(&mut self, id: u64) {
        if let Some(pos) = self.items.iter().position(|i| i.id == id) {
            if let Some(item) = self.items.remove(pos) {
                self.total -= item.size;
            }
            let _ = fs::remove_file(self.path(id));
        }
    }

    /// Drops every report (the collector asked for a snapshot, or the agent enrolled anew).
    pub fn clear(&mut self) {
        for item in self.items.drain(..) {
            let _ = fs::remove_file(self.dir.join(format!("{:020}.json", item.id)));
        }
        self.total = 0;
    }

    fn lose(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        self.lost.extend(ids.iter().map(|&id| (id, id)));
        self.lost.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.lost.len());
        for r in self.lost.drain(..) {
            match merged.last_mut() {
                Some(last) if r.0 <= last.1 + 1 => last.1 = last.1.max(r.1),
                _ => merged.push(r),
            }
        }
        self.lost = merged;
        self.save_lost();
    }

    fn lost_before(&self, id: u64) -> u64 {
        self.lost.iter().filter(|r| r.0 < id).map(|r| r.1.min(id - 1) - r.0 + 1).sum()
    }

    fn save_lost(&self) {
        let path = self.dir.join(LOST);
        let result = if self.lost.is_empty() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            let text: String = self.lost.iter().map(|(from, to)| format!("{from}-{to}\n")).collect();
            write_private(&path, text.as_bytes()).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "cannot record which reports were lost");
        }
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
        self.lost.iter().map(|r| r.1 - r.0 + 1).sum()
    }
}

/// The lost ranges an earlier run left; a line that does not parse is said and skipped (the count
/// is then short, never invented).
fn read_lost(path: &Path) -> Vec<(u64, u64)> {
    let Ok(text) = fs::read_to_string(path) else { return Vec::new() };
    let mut ranges = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let range = line.trim().split_once('-').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        match range {
            Some((from, to)) if from <= to => ranges.push((from, to)),
            _ => {
                tracing::error!(path = %path.display(), line = n + 1, text = line, "not a range of lost reports; skipped")
            }
        }
    }
    ranges.sort_unstable();
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn report(seq: u64, pad: usize) -> proto::Report {
        let now = OffsetDateTime::now_utc();
        let host = proto::HostFacts::new("x".repeat(pad.max(1)), "m");
        proto::Report::heartbeat(9, seq, now, host, proto::AgentStatus::new("0", 10, now))
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
        fs::write(d.path().join("00000000000000000009.tmp"), "{\"half").unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert!(!d.path().join("00000000000000000009.tmp").exists(), "a half-written report is cleaned up");
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
        // A report bigger than the whole spool is kept alone, until the next pushes it out.
        let mut tiny = Spool::open(&d.path().join("tiny"), 10).unwrap();
        assert_eq!(tiny.push(&report(1, 10)), 0);
        assert_eq!((tiny.len(), tiny.lost()), (1, 0));
        assert_eq!(tiny.push(&report(2, 10)), 1);
        assert_eq!(drain(&mut tiny), [(2, 1)]);
    }

    /// Drains the spool as the sender does: (seq, lost) of each report in order.
    fn drain(s: &mut Spool) -> Vec<(u64, u64)> {
        let mut seen = Vec::new();
        while let Some((id, bytes)) = s.front() {
            let r: proto::Report = serde_json::from_slice(&bytes).unwrap();
            seen.push((r.seq, r.lost));
            s.delivered(id);
        }
        seen
    }

    #[test]
    fn each_report_counts_only_the_losses_before_it() {
        let d = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&report(1, 500)).unwrap().len() as u64;
        let mut s = Spool::open(d.path(), one * 3 + 10).unwrap();
        s.push(&report(1, 500));
        s.push(&report(2, 500));
        // Larger than the whole spool: kept alone, 1 and 2 pushed out.
        assert_eq!(s.push(&report(3, 5000)), 2);
        assert_eq!(s.len(), 1);
        // 4 pushes 3 out; 5 fits beside 4.
        assert_eq!(s.push(&report(4, 500)), 1);
        assert_eq!(s.push(&report(5, 500)), 0);
        assert_eq!(s.lost(), 3);
        // Survives a restart, ranges and all.
        drop(s);
        let mut s = Spool::open(d.path(), one * 3 + 10).unwrap();
        // The collector sees 4 (1 to 3 lost before it), 5: each gap matches.
        assert_eq!(drain(&mut s), [(4, 3), (5, 0)]);
        assert_eq!(s.lost(), 0);
        assert!(!d.path().join(LOST).exists(), "nothing left to report");
        // Ids go on after the last lost one, even with the spool empty.
        s.push(&report(6, 5000));
        drop(s);
        let mut s = Spool::open(d.path(), one * 3 + 10).unwrap();
        s.push(&report(7, 500));
        assert_eq!(drain(&mut s), [(7, 1)]);
    }

    #[test]
    fn a_refused_report_is_lost_and_its_count_rides_on_the_next() {
        let d = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&report(1, 500)).unwrap().len() as u64;
        let mut s = Spool::open(d.path(), one * 2 + 10).unwrap();
        for seq in 1..=3 {
            s.push(&report(seq, 500));
        }
        let (id, bytes) = s.front().unwrap();
        assert_eq!(serde_json::from_slice::<proto::Report>(&bytes).unwrap().lost, 1);
        s.refused(id);
        assert_eq!(drain(&mut s), [(3, 2)]);
    }

    #[test]
    fn a_damaged_lost_file_is_read_as_far_as_it_goes() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(LOST), "1-2\nnonsense\n9-3\n").unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(s.lost(), 2);
        s.push(&report(1, 10));
        assert_eq!(drain(&mut s), [(1, 2)]);
    }
}
