//! The life of a finding: what an observation does to the finding it is about (open, refresh,
//! reopen, escalate, or hold back), which findings an evaluation may resolve by no longer
//! observing their item, what an acknowledgement does, which silence covers a host, and the
//! per-host budget of new findings.
//!
//! Architecture invariant: the engine decides what is unexplained, this module decides what that
//! does to findings, and the store only applies these decisions, inside the transaction that reads
//! the facts they need (the finding as stored, the host's openings in the last minute). Pure
//! functions, so every rule of the lifecycle is tested by value and every store backend applies
//! the same ones.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{FindingKind, FindingStatus, Severity};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::model::{Observation, SilenceScope};

/// Kinds whose findings describe current state: an evaluation that no longer observes their item
/// resolves them ([`resolves_by_absence`]), unless an occurrence was transient.
pub const STATE_KINDS: &[FindingKind] = &[
    FindingKind::UnexpectedProcess,
    FindingKind::MissingProcess,
    FindingKind::UnexpectedListener,
    FindingKind::MissingListener,
    FindingKind::UnexpectedConnection,
    FindingKind::SuspiciousProcess,
    FindingKind::UnauthenticatedService,
    FindingKind::Outlier,
    FindingKind::NoBaseline,
    FindingKind::AmbiguousWorkload,
];

/// Kinds whose findings are events rather than state: nothing resolves them by absence, and a new
/// occurrence reopens an acknowledged one (what was acknowledged is not this one).
pub const EVENT_KINDS: &[FindingKind] = &[
    FindingKind::FileChanged,
    FindingKind::DataLost,
    FindingKind::DuplicateIdentity,
    FindingKind::FindingsHeldBack,
    FindingKind::UnexpectedSession,
];

/// Statuses of a finding still in play: what an evaluation may resolve, what an acknowledgement
/// applies to, what `/metrics` counts. A resolved finding can only reopen.
pub const LIVE: &[FindingStatus] = &[FindingStatus::Open, FindingStatus::Acknowledged];

pub fn is_live(status: FindingStatus) -> bool {
    LIVE.contains(&status)
}

/// Whether acknowledging a finding in `status` changes it: a live one is acknowledged (again: a
/// second acknowledgement replaces who, when and the note); a resolved one has nothing to
/// acknowledge and is left as it is.
pub fn acknowledges(status: FindingStatus) -> bool {
    is_live(status)
}

/// Whether silence `scope` takes in host `host_id`, whose tags (as judged) are `tags`: a host
/// silence its own host, a selector every host holding all its tags.
pub fn silence_covers(scope: &SilenceScope, host_id: i64, tags: &BTreeMap<String, String>) -> bool {
    match scope {
        SilenceScope::Host(h) => *h == host_id,
        SilenceScope::Selector(sel) => sel.iter().all(|(k, v)| tags.get(k) == Some(v)),
    }
}

/// The silence that covers a host, of the `in_force` ones (id and scope, in the order they should
/// win: the store gives the one ending last first). Findings that open, reopen, escalate or
/// resolve under it are marked silenced and sinks do not hear of them.
pub fn covering_silence<'a>(
    in_force: impl IntoIterator<Item = (i64, &'a SilenceScope)>,
    host_id: i64,
    tags: &BTreeMap<String, String>,
) -> Option<i64> {
    in_force.into_iter().find(|(_, scope)| silence_covers(scope, host_id, tags)).map(|(id, _)| id)
}

/// A finding as stored, as far as its lifecycle goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub status: FindingStatus,
    pub severity: Severity,
    pub transient: bool,
}

/// What an observation does to its finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No finding yet: open one.
    Open,
    /// Resolved, or acknowledged and happening again: open it again.
    Reopen,
    /// Open or acknowledged and still there: refresh it. `escalated`: open, and worse than it
    /// was, so sinks that left it out for its severity hear of it now.
    Refresh { escalated: bool },
    /// Would open (or reopen), but the host is past its budget of new findings this minute:
    /// counted in its `findings_held_back` finding instead.
    HoldBack,
}

/// The per-host budget of new findings: `[findings] max_new_per_host_per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// New findings that may open per host in [`BUDGET_WINDOW`].
    pub limit: u32,
    /// Those that opened in the window before this evaluation, and during it.
    pub used: u32,
}

/// The window the budget counts openings over.
pub const BUDGET_WINDOW: Duration = Duration::minutes(1);

impl Budget {
    pub fn new(limit: u32, used: u32) -> Budget {
        Budget { limit, used }
    }
}

/// Whether an opening of `o`'s finding counts against the budget, and may be held back: only
/// findings of medium severity or less that no built-in rule files. A built-in rule's finding and
/// anything high or critical always opens: 100 junk execs must not hide the payload.
pub fn holdable(o: &Observation) -> bool {
    counts_against_budget(o.kind, o.rule.is_some(), o.severity)
}

/// [`holdable`] for a finding as stored (its kind, whether a built-in rule filed it, its
/// severity): the store counts the openings in the budget's window by this.
pub fn counts_against_budget(kind: FindingKind, by_rule: bool, severity: Severity) -> bool {
    !by_rule && severity <= Severity::Medium && kind != FindingKind::FindingsHeldBack
}

/// What observation `o` does to its finding (`existing`, if there is one), spending `budget`
/// when it opens a holdable finding.
pub fn step(existing: Option<&Existing>, o: &Observation, budget: &mut Budget) -> Step {
    let step = match existing {
        None => Step::Open,
        Some(e) if e.status == FindingStatus::Resolved => Step::Reopen,
        // An acknowledged finding stays acknowledged while its item persists; a new occurrence
        // of an event, or of an item once gone before it was judged, is not what was
        // acknowledged.
        Some(e)
            if e.status == FindingStatus::Acknowledged
                && o.occurrences > 0
                && (EVENT_KINDS.contains(&o.kind) || e.transient || o.transient) =>
        {
            Step::Reopen
        }
        Some(e) => Step::Refresh { escalated: e.status == FindingStatus::Open && o.severity > e.severity },
    };
    if matches!(step, Step::Open | Step::Reopen) && holdable(o) {
        if budget.used >= budget.limit {
            return Step::HoldBack;
        }
        budget.used += 1;
    }
    step
}

/// The detail a finding keeps when observation `o` refreshes or reopens it (`stored`: its detail
/// until now): `o`'s, except for kinds that accumulate (a session's list of what ran grows).
pub fn detail_after(stored: Option<&serde_json::Value>, o: &Observation) -> serde_json::Value {
    match stored {
        Some(old) if accumulates(o.kind) => {
            let mut d = old.clone();
            crate::engine::session::combine(&mut d, &o.detail);
            d
        }
        _ => o.detail.clone(),
    }
}

/// Whether a finding of `kind` keeps its stored detail, laid under each new one
/// ([`detail_after`]): the store reads it back only for these.
pub fn accumulates(kind: FindingKind) -> bool {
    crate::engine::session::accumulates(kind)
}

/// Whether an open or acknowledged finding of `kind` resolves when an evaluation that may resolve
/// `state_kinds` no longer observes its item. A finding any of whose occurrences was transient
/// resolves only by acknowledgement: its item being gone proves nothing.
pub fn resolves_by_absence(kind: FindingKind, transient: bool, state_kinds: &[FindingKind]) -> bool {
    state_kinds.contains(&kind) && !transient
}

/// The finding that counts what was held back on a host: one per host, an event (it reopens on the
/// next burst after an acknowledgement); each held-back occurrence is one occurrence of it.
pub fn held_back(count: u64, budget: Budget, host_id: i64, now: OffsetDateTime) -> Observation {
    Observation {
        kind: FindingKind::FindingsHeldBack,
        rule: None,
        severity: crate::engine::default_severity(FindingKind::FindingsHeldBack),
        subject: "new findings".to_owned(),
        detail: json!({
            "held_back": count,
            "limit_per_minute": budget.limit,
            "at": hostwatch_proto::v1::timestamp::format(now),
            "why": "more new findings of medium severity or less than the per-minute limit; built-in rules and high or critical findings are never held back",
            "history": format!("hostwatch history processes --host {host_id} --since 10m; hostwatch history sockets --host {host_id} --since 10m"),
        }),
        occurrences: count,
        transient: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: FindingKind, severity: Severity, occurrences: u64, transient: bool) -> Observation {
        Observation {
            kind,
            rule: None,
            severity,
            subject: "/usr/bin/x".into(),
            detail: json!({}),
            occurrences,
            transient,
        }
    }

    fn existing(status: FindingStatus, transient: bool) -> Existing {
        Existing { status, severity: Severity::Medium, transient }
    }

    #[test]
    fn the_lifecycle() {
        use FindingStatus::{Acknowledged, Open, Resolved};
        let mut b = Budget::new(100, 0);
        let process = |occ, tr| obs(FindingKind::UnexpectedProcess, Severity::Medium, occ, tr);
        assert_eq!(step(None, &process(0, false), &mut b), Step::Open);
        assert_eq!(step(Some(&existing(Resolved, false)), &process(0, false), &mut b), Step::Reopen);
        assert_eq!(
            step(Some(&existing(Open, false)), &process(1, false), &mut b),
            Step::Refresh { escalated: false }
        );
        // Acknowledged and persisting: stays acknowledged, even when another instance starts.
        assert_eq!(
            step(Some(&existing(Acknowledged, false)), &process(1, false), &mut b),
            Step::Refresh { escalated: false }
        );
        // Acknowledged, but it was (or now is) transient: a new run is news.
        assert_eq!(step(Some(&existing(Acknowledged, true)), &process(1, false), &mut b), Step::Reopen);
        assert_eq!(step(Some(&existing(Acknowledged, false)), &process(1, true), &mut b), Step::Reopen);
        // ... but only a new run: the same run seen still there is not.
        assert_eq!(
            step(Some(&existing(Acknowledged, true)), &process(0, false), &mut b),
            Step::Refresh { escalated: false }
        );
        // Events reopen acknowledged findings.
        let file = obs(FindingKind::FileChanged, Severity::High, 1, false);
        assert_eq!(step(Some(&existing(Acknowledged, false)), &file, &mut b), Step::Reopen);
        // Worse than when it opened.
        assert_eq!(step(Some(&existing(Open, false)), &file, &mut b), Step::Refresh { escalated: true });
        assert_eq!(b.used, 4, "openings of holdable findings count; the file change is high");
        // Transient findings never resolve by absence; state ones of the kinds asked do.
        let kinds = [FindingKind::UnexpectedProcess];
        assert!(resolves_by_absence(FindingKind::UnexpectedProcess, false, &kinds));
        assert!(!resolves_by_absence(FindingKind::UnexpectedProcess, true, &kinds));
        assert!(!resolves_by_absence(FindingKind::FileChanged, false, &kinds));
    }

    /// The lifecycle as a table: for a state kind and an event kind, each stored status, whether
    /// the stored finding or the new observation was transient, whether the observation is a
    /// new occurrence, and whether it is worse than what is stored.
    #[test]
    fn the_lifecycle_as_a_table() {
        use FindingKind::{FileChanged as Event, UnexpectedProcess as State};
        use FindingStatus::{Acknowledged as Ack, Open, Resolved};
        use Step::{Open as Opens, Refresh, Reopen};
        let same = Refresh { escalated: false };
        let worse = Refresh { escalated: true };
        /// (kind, stored: None or (status, transient), new occurrence, observed transient,
        /// worse, step)
        type Case = (FindingKind, Option<(FindingStatus, bool)>, bool, bool, bool, Step);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (State, None, false, false, false, Opens),
            (Event, None, true, false, false, Opens),
            // Resolved: anything observed again reopens.
            (State, Some((Resolved, false)), false, false, false, Reopen),
            (Event, Some((Resolved, false)), true, false, false, Reopen),
            (State, Some((Resolved, true)), true, true, false, Reopen),
            // Open: refreshed; escalated when worse, whatever the kind.
            (State, Some((Open, false)), false, false, false, same),
            (State, Some((Open, false)), true, false, true, worse),
            (Event, Some((Open, false)), true, false, false, same),
            (Event, Some((Open, false)), true, false, true, worse),
            (State, Some((Open, true)), true, true, false, same),
            // Acknowledged state that persists, or starts again as steady state: stays acknowledged.
            (State, Some((Ack, false)), false, false, false, same),
            (State, Some((Ack, false)), true, false, false, same),
            // ... and an acknowledged finding is never escalated (nobody is told of it again).
            (State, Some((Ack, false)), true, false, true, same),
            // Acknowledged, but a new occurrence of an event, or of something transient: news.
            (Event, Some((Ack, false)), true, false, false, Reopen),
            (State, Some((Ack, true)), true, false, false, Reopen),
            (State, Some((Ack, false)), true, true, false, Reopen),
            // The same transient run seen again is not a new occurrence.
            (State, Some((Ack, true)), false, true, false, same),
            (Event, Some((Ack, false)), false, false, false, same),
        ];
        for (i, &(kind, stored, new, transient, worse_now, want)) in cases.iter().enumerate() {
            let severity = if worse_now { Severity::High } else { Severity::Medium };
            let o = obs(kind, severity, u64::from(new), transient);
            let e = stored.map(|(status, t)| existing(status, t));
            let mut budget = Budget::new(1000, 0);
            assert_eq!(step(e.as_ref(), &o, &mut budget), want, "case {i}: {:?}", cases[i]);
        }
        // Which findings resolve when their item is no longer observed: state kinds only, and
        // only where no occurrence was transient (a transient one resolves by acknowledgement).
        for kind in [State, FindingKind::UnexpectedListener, FindingKind::UnexpectedConnection] {
            assert!(resolves_by_absence(kind, false, STATE_KINDS), "{kind:?}");
            assert!(!resolves_by_absence(kind, true, STATE_KINDS), "{kind:?}");
        }
        for kind in EVENT_KINDS {
            assert!(!STATE_KINDS.contains(kind), "{kind:?} is both");
            assert!(!resolves_by_absence(*kind, false, STATE_KINDS), "{kind:?}");
        }
    }

    #[test]
    fn the_budget_holds_back_only_what_may_wait() {
        let mut b = Budget::new(2, 1);
        let medium = obs(FindingKind::UnexpectedProcess, Severity::Medium, 1, true);
        assert_eq!(step(None, &medium, &mut b), Step::Open);
        assert_eq!(step(None, &medium, &mut b), Step::HoldBack);
        assert_eq!(step(Some(&existing(FindingStatus::Resolved, false)), &medium, &mut b), Step::HoldBack);
        // Refreshing what is open costs nothing and is never held back.
        assert_eq!(
            step(Some(&existing(FindingStatus::Open, true)), &medium, &mut b),
            Step::Refresh { escalated: false }
        );
        // High findings and built-in rules' findings always open.
        let high = obs(FindingKind::UnexpectedListener, Severity::High, 1, false);
        assert_eq!(step(None, &high, &mut b), Step::Open);
        let rule = Observation { rule: Some("exe-in-temp".into()), ..medium.clone() };
        assert_eq!(step(None, &rule, &mut b), Step::Open);
        let count = held_back(7, b, 3, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(step(None, &count, &mut b), Step::Open, "the count itself is never held back");
        assert_eq!((count.occurrences, count.detail["held_back"].as_u64()), (7, Some(7)));
        assert_eq!(b.used, 2);
    }

    #[test]
    fn acknowledgements_apply_to_live_findings_only() {
        assert!(acknowledges(FindingStatus::Open));
        assert!(acknowledges(FindingStatus::Acknowledged), "again, with a new note");
        assert!(!acknowledges(FindingStatus::Resolved));
        assert_eq!(LIVE.iter().filter(|s| is_live(**s)).count(), 2);
        assert!(!is_live(FindingStatus::Resolved));
    }

    #[test]
    fn which_silence_covers_a_host() {
        let tags: BTreeMap<String, String> =
            [("env".to_owned(), "prod".to_owned()), ("role".to_owned(), "web".to_owned())].into();
        let sel = |pairs: &[(&str, &str)]| {
            SilenceScope::Selector(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
        };
        assert!(silence_covers(&SilenceScope::Host(7), 7, &tags));
        assert!(!silence_covers(&SilenceScope::Host(8), 7, &tags));
        assert!(silence_covers(&sel(&[("env", "prod")]), 7, &tags));
        assert!(silence_covers(&sel(&[("env", "prod"), ("role", "web")]), 7, &tags));
        assert!(!silence_covers(&sel(&[("env", "prod"), ("role", "db")]), 7, &tags), "every tag must hold");
        assert!(!silence_covers(&sel(&[("team", "x")]), 7, &tags));
        let (other, staging, prod, host) = (
            SilenceScope::Host(8),
            sel(&[("env", "staging")]),
            sel(&[("env", "prod")]),
            SilenceScope::Host(7),
        );
        // The first that covers wins, in the order given.
        assert_eq!(covering_silence([(1, &other), (2, &staging), (3, &prod), (4, &host)], 7, &tags), Some(3));
        assert_eq!(covering_silence([(4, &host), (3, &prod)], 7, &tags), Some(4));
        assert_eq!(covering_silence([(1, &other), (2, &staging)], 7, &tags), None);
    }

    #[test]
    fn the_budget_counts_stored_openings_as_it_holds_observations() {
        for kind in [FindingKind::UnexpectedProcess, FindingKind::FindingsHeldBack, FindingKind::FileChanged]
        {
            for severity in
                [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
            {
                for rule in [None, Some("exe-in-temp".to_owned())] {
                    let o = Observation { rule: rule.clone(), ..obs(kind, severity, 1, false) };
                    assert_eq!(holdable(&o), counts_against_budget(kind, rule.is_some(), severity), "{o:?}");
                }
            }
        }
        assert!(counts_against_budget(FindingKind::UnexpectedProcess, false, Severity::Medium));
        assert!(!counts_against_budget(FindingKind::UnexpectedProcess, false, Severity::High));
        assert!(!counts_against_budget(FindingKind::UnexpectedProcess, true, Severity::Low));
        assert!(!counts_against_budget(FindingKind::FindingsHeldBack, false, Severity::Low));
    }
}
