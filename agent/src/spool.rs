//! The outbox: every report is written here before it is sent, and deleted once the collector
//! has it, so nothing is lost to a collector that is down or an agent that restarts.
//!
//! One file per report in `STATE_DIR/spool/`, named by a counter so that order survives restarts,
//! gzip-compressed as it is written (`ID.json.gz`) and sent as it lies: a busy host's snapshot is
//! megabytes of JSON and a tenth of that compressed, and the agent never holds it whole in memory,
//! neither to write nor to send. (`ID.json`, uncompressed, is what agents before that wrote; it is
//! still read and compressed when sent.)
//! The spool is bounded in bytes on disk (default 64 MiB): a report that does not fit pushes out the
//! oldest; one larger than the whole bound is kept alone (so that a host whose snapshot outgrew a
//! small bound still reports, with the collector up). A report that cannot be written (a full
//! disk) is held in memory instead, compressed, in its place in the order, and sent from there
//! (at most [`HELD_MAX`] or the bound; past it the oldest held are lost): with the disk full
//! and the collector up, nothing is lost; were the agent to stop meanwhile, what it held is
//! lost and the collector sees the gap. A report the collector refused for good is lost, counted.
//! Nothing is dropped without being
//! counted: the places of lost reports in the spool's order are kept in `spool/lost` (ranges of
//! ids, one `from-to` a line), and each report sent says how many were lost *before it*, so the
//! count matches the gap in sequence numbers the collector sees (which files data_lost).

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;

use std::io::{BufWriter, Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::shared::private_file::{StateError, write_private, write_private_with};

#[derive(Debug)]
struct Item {
    id: u64,
    size: u64,
    /// Written compressed (`.json.gz`); `false` for what an older agent left (`.json`).
    gzip: bool,
    /// The report, compressed, where it could not be written to disk.
    held: Option<Vec<u8>>,
}

/// Bytes of reports held in memory at most while the disk takes none (and no more than the
/// spool's bound).
pub const HELD_MAX: u64 = 16 << 20;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    items: VecDeque<Item>,
    total: u64,
    next_id: u64,
    /// Ids of reports lost and not yet reported as such: sorted, disjoint, inclusive ranges.
    lost: Vec<(u64, u64)>,
    /// Bytes of the items held in memory.
    held: u64,
    /// Whether the last write failed: said once when it starts failing and once when it ends.
    disk_failing: bool,
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
            let Some(name) = name.to_str() else { continue };
            let (stem, gzip) = match name.strip_suffix(".json.gz") {
                Some(stem) => (stem, true),
                None => (name.strip_suffix(".json").unwrap_or(""), false),
            };
            let Ok(id) = stem.parse() else { continue };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            items.push(Item { id, size, gzip, held: None });
        }
        items.sort_by_key(|i| i.id);
        let lost = read_lost(&dir.join(LOST));
        let total = items.iter().map(|i| i.size).sum();
        let next_id = items.last().map(|i| i.id).max(lost.last().map(|r| r.1)).map_or(1, |id| id + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            items: items.into(),
            total,
            next_id,
            lost,
            held: 0,
            disk_failing: false,
        })
    }

    fn held_max(&self) -> u64 {
        HELD_MAX.min(self.max_bytes)
    }

    /// An item out of the spool: its file removed, or its memory counted free.
    fn forget(&mut self, item: &Item) {
        self.total -= item.size;
        if item.held.is_some() {
            self.held -= item.size;
        } else {
            let _ = fs::remove_file(self.path(item));
        }
    }

    fn path(&self, item: &Item) -> PathBuf {
        let ext = if item.gzip { "json.gz" } else { "json" };
        self.dir.join(format!("{:020}.{ext}", item.id))
    }

    /// Appends a report, pushing out the oldest where the bound requires. Returns how many reports
    /// were lost (pushed out to make room, or this one if it could be neither written nor held).
    pub fn push(&mut self, report: &proto::Report) -> u64 {
        // Every report takes its place in the order, written or not.
        let id = self.next_id;
        self.next_id += 1;
        let mut item = Item { id, size: 0, gzip: true, held: None };
        let path = self.path(&item);
        // Streamed to disk through the compressor: a snapshot of a busy host is megabytes, never
        // held whole in memory (the file may briefly overstep the bound until the oldest are
        // pushed out).
        let written = write_private_with(&path, |f| {
            let mut gz = GzEncoder::new(BufWriter::new(f), Compression::fast());
            to_json(&mut gz, report)?;
            let mut w = gz.finish()?;
            w.flush()?;
            item.size = w.get_ref().metadata()?.len();
            Ok(())
        });
        match written {
            Err(e) => {
                let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
                match to_json(&mut gz, report).and_then(|()| gz.finish()) {
                    Ok(bytes) => {
                        if !self.disk_failing {
                            tracing::error!(
                                seq = report.seq,
                                error = %e,
                                held_max = self.held_max(),
                                "cannot write the spool (disk full?); holding reports in memory until they are sent or the disk has room"
                            );
                            self.disk_failing = true;
                        }
                        item.size = bytes.len() as u64;
                        item.held = Some(bytes);
                    }
                    Err(e) => {
                        tracing::error!(seq = report.seq, error = %e, "cannot spool a report; it is lost");
                        self.lose(&[id]);
                        return 1;
                    }
                }
            }
            Ok(()) if self.disk_failing => {
                tracing::info!(seq = report.seq, "the spool is written to disk again");
                self.disk_failing = false;
            }
            Ok(()) => {}
        }
        let size = item.size;
        let mut lost = Vec::new();
        if item.held.is_some() {
            while self.held + size > self.held_max() {
                let Some(pos) = self.items.iter().position(|i| i.held.is_some()) else { break };
                if let Some(old) = self.items.remove(pos) {
                    self.forget(&old);
                    lost.push(old.id);
                }
            }
            self.held += size;
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
        while self.total + size > self.max_bytes {
            let Some(old) = self.items.pop_front() else { break };
            self.forget(&old);
            lost.push(old.id);
        }
        if !lost.is_empty() {
            tracing::warn!(dropped = lost.len(), "spool full: oldest reports dropped");
        }
        self.items.push_back(item);
        self.total += size;
        self.lose(&lost);
        lost.len() as u64
    }

    /// The oldest report, gzip-compressed, with the count of reports lost before it written into
    /// it. A report that cannot be read back (a damaged file) is dropped and counted lost, so that
    /// it never blocks those behind it.
    pub fn front(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            let item = self.items.front()?;
            let (id, path) = (item.id, self.path(item));
            match self.read(item) {
                Ok(body) => return Some((id, body)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "a spooled report cannot be read; it is lost");
                    self.refused(id);
                }
            }
        }
    }

    /// Item's report as it is sent: compressed, with its `lost` count. Only where reports were
    /// lost before it (rare) is it decoded and written anew.
    fn read(&self, item: &Item) -> std::io::Result<Vec<u8>> {
        let lost = self.lost_before(item.id);
        let file = match &item.held {
            Some(bytes) => bytes.clone(),
            None => fs::read(self.path(item))?,
        };
        if item.gzip && !file.starts_with(&[0x1f, 0x8b]) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not gzip"));
        }
        // Damage past the header is the collector's to find: it refuses the report for good,
        // and the sender counts it lost.
        if lost == 0 && item.gzip {
            return Ok(file);
        }
        let json = if item.gzip {
            let mut json = Vec::new();
            GzDecoder::new(&file[..]).read_to_end(&mut json)?;
            json
        } else {
            file
        };
        let mut report: proto::Report = serde_json::from_slice(&json).map_err(std::io::Error::other)?;
        drop(json);
        report.lost = lost;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        to_json(&mut gz, &report)?;
        gz.finish()
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
        if let Some(pos) = self.items.iter().position(|i| i.id == id)
            && let Some(item) = self.items.remove(pos)
        {
            self.forget(&item);
        }
    }

    /// Drops every report (the collector asked for a snapshot, or the agent enrolled anew).
    pub fn clear(&mut self) {
        for item in std::mem::take(&mut self.items) {
            self.forget(&item);
        }
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

/// Serializes `report` into the compressor through a buffer: serde writes a few bytes at a
/// time, and each write the compressor takes costs it a pass over its whole output buffer (a
/// quarter of the agent's CPU under 200 new connections a second went to that, unbuffered).
fn to_json<W: Write>(gz: &mut GzEncoder<W>, report: &proto::Report) -> std::io::Result<()> {
    let mut buffered = BufWriter::with_capacity(32 << 10, gz);
    serde_json::to_writer(&mut buffered, report).map_err(std::io::Error::other)?;
    buffered.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn report(seq: u64, pad: usize) -> proto::Report {
        let now = OffsetDateTime::now_utc();
        // Hex of a simple generator: padding that compresses no better than real reports do.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let name: String = (0..pad.max(1))
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from_digit(((x >> 60) & 0xf) as u32, 16).unwrap_or('0')
            })
            .collect();
        let host = proto::HostFacts::new(name, "m");
        proto::Report::heartbeat(9, seq, now, host, proto::AgentStatus::new("0", 10, now))
    }

    /// A report as the sender has it from the spool: gzip-compressed JSON.
    fn decode(bytes: &[u8]) -> proto::Report {
        let mut json = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut json).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    fn seq_of(bytes: &[u8]) -> u64 {
        decode(bytes).seq
    }

    /// Bytes on disk of one report padded with `pad` characters that do not compress away.
    fn spooled_size(pad: usize) -> u64 {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        s.push(&report(1, pad));
        s.bytes()
    }

    /// A report's file made impossible to write (a directory where its temporary file goes), as
    /// a full disk would.
    fn unwritable(dir: &Path, id: u64) {
        fs::create_dir_all(dir.join(format!("{id:020}.json.tmp"))).unwrap();
    }

    #[test]
    fn a_report_the_disk_does_not_take_is_held_in_memory_in_its_place() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(s.push(&report(1, 10)), 0);
        unwritable(d.path(), 2);
        assert_eq!(s.push(&report(2, 10)), 0, "held, not lost");
        assert_eq!(s.push(&report(3, 10)), 0);
        assert_eq!((s.len(), s.lost(), spooled_files(d.path())), (3, 0, 2));
        let mut sent = Vec::new();
        while let Some((id, body)) = s.front() {
            sent.push(seq_of(&body));
            s.delivered(id);
        }
        assert_eq!(sent, [1, 2, 3], "in order, the held one from memory");
        assert_eq!((s.bytes(), s.held), (0, 0));
    }

    #[test]
    fn held_reports_are_bounded_and_the_oldest_held_are_lost_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let size = spooled_size(4000);
        // Room on "disk" for everything; in memory for three reports at most.
        let mut s = Spool::open(d.path(), 3 * size + size / 2).unwrap();
        let mut lost = 0;
        for seq in 1..=5 {
            unwritable(d.path(), seq);
            lost += s.push(&report(seq, 4000));
        }
        assert_eq!((lost, s.lost(), s.len()), (2, 2, 3));
        let (id, body) = s.front().unwrap();
        let first = decode(&body);
        assert_eq!((first.seq, first.lost), (3, 2), "the oldest two went, and the next says so");
        s.delivered(id);
    }

    fn spooled_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json.gz"))
            .count()
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
        let one = spooled_size(500);
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
        let r = decode(&bytes);
        assert_eq!((r.seq, r.lost), (3, 2));
        s.delivered(id);
        assert_eq!(s.lost(), 0, "reported once");
        let (_, bytes) = s.front().unwrap();
        assert_eq!(decode(&bytes).lost, 0);
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
            let r = decode(&bytes);
            seen.push((r.seq, r.lost));
            s.delivered(id);
        }
        seen
    }

    #[test]
    fn each_report_counts_only_the_losses_before_it() {
        let d = tempfile::tempdir().unwrap();
        let one = spooled_size(500);
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
        let one = spooled_size(500);
        let mut s = Spool::open(d.path(), one * 2 + 10).unwrap();
        for seq in 1..=3 {
            s.push(&report(seq, 500));
        }
        let (id, bytes) = s.front().unwrap();
        assert_eq!(decode(&bytes).lost, 1);
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

    #[test]
    fn reports_lie_compressed_and_what_an_older_agent_left_is_still_sent() {
        let d = tempfile::tempdir().unwrap();
        // An older agent's uncompressed report, then a damaged one: the first is sent
        // (compressed), the second dropped and counted lost, and neither blocks the next.
        let old = serde_json::to_vec(&report(1, 100)).unwrap();
        fs::write(d.path().join("00000000000000000001.json"), &old).unwrap();
        fs::write(d.path().join("00000000000000000002.json.gz"), b"not gzip").unwrap();
        let mut s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        s.push(&report(3, 20_000));
        let on_disk = s.bytes() - old.len() as u64 - 8;
        assert!(on_disk < 20_000 * 6 / 10, "{on_disk} bytes on disk for 20,000 hex characters");
        assert!(d.path().join("00000000000000000003.json.gz").exists());
        assert_eq!(drain(&mut s), [(1, 0), (3, 1)]);
        assert_eq!((s.len(), s.bytes()), (0, 0));
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "every file removed");
    }
}
