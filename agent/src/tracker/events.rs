//! Sockets the kernel's events told of (the eBPF source), between and beside the scans.
//!
//! The scans stay the picture of what is open; an event adds what they have not shown yet. A
//! socket that opened and closed between two reports goes out as come and gone (added and
//! removed in one delta), with the owner the event named; one that is still open goes out at
//! once and stays here until a scan shows it (then it is the scan's) or it closes. One that a
//! scan taken after its opening no longer shows closed unseen (UDP has no close event).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use hostwatch_proto::v1::{Changes, Removed};
use time::OffsetDateTime;

use super::{Keyed, fingerprint, holds};

#[derive(Debug)]
pub(super) struct FromEvents<T: Keyed> {
    /// Open and not in the scan's list: the item, when it opened, and whether a report carried it.
    open: BTreeMap<T::Key, Open<T>>,
    /// Opened and closed before any report carried it, with when it closed.
    transient: Vec<(T, OffsetDateTime)>,
    /// Reported sockets that closed since, and when.
    closed: Vec<(T::Key, OffsetDateTime)>,
    /// The keys of `transient` and `closed`: the next report already ends a socket of these.
    ending: BTreeSet<T::Key>,
}

#[derive(Debug)]
struct Open<T> {
    item: T,
    at: OffsetDateTime,
    sent: bool,
}

impl<T: Keyed> Default for FromEvents<T> {
    fn default() -> Self {
        FromEvents {
            open: BTreeMap::new(),
            transient: Vec::new(),
            closed: Vec::new(),
            ending: BTreeSet::new(),
        }
    }
}

impl<T: Keyed + Clone + Hash> FromEvents<T> {
    /// A socket of `key` opens at `at`. One of the same key still open here is gone by then (a
    /// UDP socket does not say when it closes; a TCP close may have been dropped). Returns
    /// whether the next report already ends a socket of this key: a report cannot tell two
    /// sockets of one key apart (it would carry one opening, and end the new one), so the new
    /// one must wait for the report after it.
    pub(super) fn reopening(
        &mut self,
        key: &T::Key,
        at: OffsetDateTime,
        sent: &mut BTreeMap<T::Key, u64>,
    ) -> bool {
        if let Some(earlier) = self.open.remove(key) {
            self.end(key, earlier, at, sent);
        }
        self.ending.contains(key)
    }

    /// An event's socket is gone at `at`: come and gone if no report carried it, else closed.
    fn end(&mut self, key: &T::Key, open: Open<T>, at: OffsetDateTime, sent: &mut BTreeMap<T::Key, u64>) {
        if open.sent {
            sent.remove(key);
            self.closed.push((key.clone(), at));
        } else {
            self.transient.push((open.item, at));
        }
        self.ending.insert(key.clone());
    }

    /// A socket opened at `at`. One the scans or the reports already have is theirs.
    pub(super) fn opened(
        &mut self,
        item: T,
        at: OffsetDateTime,
        current: &[T],
        sent: &BTreeMap<T::Key, u64>,
    ) {
        let key = item.wire_key();
        if holds(current, &key) || sent.contains_key(&key) || self.open.contains_key(&key) {
            return;
        }
        self.open.insert(key, Open { item, at, sent: false });
    }

    /// A socket closed at `at`: one never reported is come and gone; one reported is removed
    /// from what was sent and from the scan's list, which would otherwise report it again.
    pub(super) fn closed(
        &mut self,
        key: &T::Key,
        at: OffsetDateTime,
        current: &mut Vec<T>,
        sent: &mut BTreeMap<T::Key, u64>,
    ) {
        if let Some(open) = self.open.remove(key) {
            self.end(key, open, at, sent);
            return;
        }
        let scanned = current.binary_search_by(|x| x.wire_key().cmp(key)).ok().map(|pos| current.remove(pos));
        if sent.remove(key).is_some() {
            self.closed.push((key.clone(), at));
        } else if let Some(item) = scanned {
            // A scan saw it, no report carried it: it came and went all the same.
            self.transient.push((item, at));
        } else {
            return;
        }
        self.ending.insert(key.clone());
    }

    /// A scan that looked at `seen_at` listed `current`: what it shows is its own now; what it
    /// lacks and opened before it looked closed unseen, at the latest then.
    pub(super) fn scanned(
        &mut self,
        current: &[T],
        seen_at: OffsetDateTime,
        sent: &mut BTreeMap<T::Key, u64>,
    ) {
        self.open.retain(|key, _| !holds(current, key));
        let unseen: Vec<T::Key> =
            self.open.iter().filter(|(_, open)| open.at < seen_at).map(|(key, _)| key.clone()).collect();
        for key in unseen {
            if let Some(open) = self.open.remove(&key) {
                self.end(&key, open, seen_at, sent);
            }
        }
    }

    /// Names the owner of each of a scan's sockets that has none where an event named it: a
    /// scan that read a socket after its short-lived owner ended cannot tell whose it was, and
    /// the scan's item is the one that is kept.
    pub(super) fn lend_owners(&self, scanned: &mut [T]) {
        if self.open.is_empty() {
            return;
        }
        for item in scanned.iter_mut().filter(|i| i.owner_missing()) {
            if let Some(open) = self.open.get(&item.wire_key())
                && !open.item.owner_missing()
            {
                item.adopt_owner(&open.item);
            }
        }
    }

    /// The open ones.
    pub(super) fn open_items(&self) -> impl Iterator<Item = &T> {
        self.open.values().map(|o| &o.item)
    }

    /// Keys reported from events and still open: a diff of the scan's list must not remove them.
    pub(super) fn holds_sent(&self, key: &T::Key) -> bool {
        self.open.get(key).is_some_and(|o| o.sent)
    }

    /// Puts back the fingerprints of those reported and still open, after `sent` was made anew
    /// from the scan's list.
    pub(super) fn keep_sent(&self, sent: &mut BTreeMap<T::Key, u64>) {
        for (key, open) in self.open.iter().filter(|(_, o)| o.sent) {
            sent.insert(key.clone(), fingerprint(&open.item));
        }
    }

    /// How many of `sent`'s keys are these (for the quick check whether the scan's list moved).
    pub(super) fn sent_count(&self) -> usize {
        self.open.values().filter(|o| o.sent).count()
    }

    /// Whether the next report has something of these to carry.
    pub(super) fn pending(&self) -> bool {
        !self.transient.is_empty() || !self.closed.is_empty() || self.open.values().any(|o| !o.sent)
    }

    /// What only a delta can carry (a snapshot lists what is open, not what came and went).
    pub(super) fn has_history(&self) -> bool {
        !self.transient.is_empty() || !self.closed.is_empty()
    }

    /// Puts what the next delta carries into `changes` and counts it as sent.
    pub(super) fn take(&mut self, changes: &mut Changes<T, T::Key>, sent: &mut BTreeMap<T::Key, u64>) {
        for (key, open) in self.open.iter_mut().filter(|(_, o)| !o.sent) {
            changes.added.push(open.item.clone());
            sent.insert(key.clone(), fingerprint(&open.item));
            open.sent = true;
        }
        for (item, at) in self.transient.drain(..) {
            changes.removed.push(Removed { key: item.wire_key(), at });
            changes.added.push(item);
        }
        for (key, at) in self.closed.drain(..) {
            changes.removed.push(Removed { key, at });
        }
        self.ending.clear();
    }

    /// The open ones, for a snapshot (which then counts them as sent).
    pub(super) fn snapshot(&mut self, into: &mut Vec<T>, sent: &mut BTreeMap<T::Key, u64>) {
        for (key, open) in self.open.iter_mut() {
            into.push(open.item.clone());
            sent.insert(key.clone(), fingerprint(&open.item));
            open.sent = true;
        }
        self.closed.clear();
        self.ending = self.transient.iter().map(|(item, _)| item.wire_key()).collect();
    }
}
