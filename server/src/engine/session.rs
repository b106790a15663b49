//! Login sessions: which session a process belongs to, where the login came from, and the one
//! `unexpected_session` finding that stands for everything a session no rule allows ran.
//!
//! A process belongs to a login session when the kernel gave it an audit login uid and session
//! id (`pam_loginuid` at an sshd, console or cron login); what it starts inherits both, so the
//! session id groups a login's commands whatever their parents did. Invariant: the detail's
//! `ran` list is bounded ([`MAX_RAN`]) and merging two details for one session never loses the
//! first commands nor the latest.

use std::collections::HashMap;
use std::net::IpAddr;

use hostwatch_proto::v1::{Ancestor, Direction, FindingKind, Protocol};
use serde_json::{Value, json};

use crate::model::{Connection, Process};

/// Commands a session finding lists at most: the first half of them and the latest half, with
/// how many were left out between.
pub const MAX_RAN: usize = 100;

/// The audit (login uid, session id) of `p`, where a login started it.
pub fn login(p: &Process) -> Option<(u32, u32)> {
    Some((p.login_uid?, p.session_id?))
}

/// Who logged in: the login uid's name, else the uid as a number (what `[[session]] user` names).
pub fn user(p: &Process) -> String {
    match (&p.login_user, p.login_uid) {
        (Some(name), _) => name.clone(),
        (None, Some(uid)) => uid.to_string(),
        (None, None) => "?".to_owned(),
    }
}

/// The subject of `p`'s session finding: `session 7 of alice`.
pub fn subject(p: &Process) -> Option<String> {
    let (_, sid) = login(p)?;
    Some(format!("session {sid} of {}", user(p)))
}

/// The peers of inbound TCP connections by the pid holding them: where an sshd's client is.
#[derive(Debug, Default)]
pub struct Peers(HashMap<u32, IpAddr>);

impl Peers {
    pub fn of<'a>(connections: impl Iterator<Item = &'a Connection>) -> Peers {
        let mut map = HashMap::new();
        for c in connections {
            if let (Direction::Inbound, Protocol::Tcp, Some(pid)) = (c.direction, c.protocol, c.pid) {
                map.entry(pid).or_insert(c.remote.ip().to_canonical());
            }
        }
        Peers(map)
    }

    /// Where the login `p` belongs to came from: the client of the nearest sshd among its
    /// ancestors (an sshd names its per-login processes `sshd` or `sshd-session`) that holds an
    /// inbound connection. `None` for a console or cron login, or a connection not seen yet.
    pub fn of_login(&self, p: &Process) -> Option<IpAddr> {
        login(p)?;
        p.ancestry.iter().filter(|a| a.name.starts_with("sshd")).find_map(|a| self.0.get(&a.pid).copied())
    }
}

/// One command of a session, as the finding lists it.
pub fn ran(p: &Process, started_at: Option<&str>) -> Value {
    json!({
        "pid": p.pid,
        "name": p.name,
        "exe": p.exe,
        "user": p.user_or_uid(),
        "cmdline": p.cmdline_string(),
        "parent": p.ancestry.first().map(|a| json!({ "pid": a.pid, "name": a.name })),
        "started_at": started_at,
    })
}

/// The detail of the session finding of `first` (any process of the session), listing `ran`;
/// `via` is what the login came through (sshd, cron, login), where known.
pub fn detail(first: &Process, from: Option<IpAddr>, via: Option<&Ancestor>, ran: Vec<Value>) -> Value {
    let via = via.map(|a| json!({ "pid": a.pid, "name": a.name, "exe": a.exe }));
    let mut d = json!({
        "user": user(first),
        "login_uid": first.login_uid,
        "session_id": first.session_id,
        "from": from.map(|a| a.to_string()),
        "via": via,
        "ran": [],
        "ran_omitted": 0,
    });
    add_ran(&mut d, ran, 0);
    d
}

/// Lays the commands of `from` (a later detail of the same session) over `into`: the union of
/// both `ran` lists, in order of start, bounded as [`MAX_RAN`] says; the rest of `from`'s fields
/// win (a peer learnt later, say), except a `from` of null over a known one.
pub fn combine(into: &mut Value, from: &Value) {
    let more: Vec<Value> = from["ran"].as_array().cloned().unwrap_or_default();
    let omitted = from["ran_omitted"].as_u64().unwrap_or(0);
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in from {
            if matches!(k.as_str(), "ran" | "ran_omitted") || (k == "from" && v.is_null()) {
                continue;
            }
            into.insert(k.clone(), v.clone());
        }
    }
    add_ran(into, more, omitted);
}

/// Adds `more` commands (and `omitted` more left out of them) to `d`'s `ran`, once each (by pid
/// and start), sorted by start, the middle left out past [`MAX_RAN`].
fn add_ran(d: &mut Value, more: Vec<Value>, omitted: u64) {
    let mut list: Vec<Value> = d["ran"].as_array().cloned().unwrap_or_default();
    let mut dropped = d["ran_omitted"].as_u64().unwrap_or(0) + omitted;
    let key = |v: &Value| (v["started_at"].as_str().map(str::to_owned), v["pid"].as_u64());
    for m in more {
        if !list.iter().any(|v| key(v) == key(&m)) {
            list.push(m);
        }
    }
    // RFC 3339 in UTC sorts as text; an unknown start sorts first.
    list.sort_by_key(key);
    if list.len() > MAX_RAN {
        let cut = list.len() - MAX_RAN;
        let half = MAX_RAN / 2;
        list.drain(half..half + cut);
        dropped += cut as u64;
    }
    d["ran"] = Value::Array(list);
    d["ran_omitted"] = json!(dropped);
}

/// Whether the detail of a finding of `kind` is laid over the stored one rather than replacing
/// it: a session's list of what ran grows over the session's reports.
pub fn accumulates(kind: FindingKind) -> bool {
    kind == FindingKind::UnexpectedSession
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: u32, sid: Option<u32>) -> Process {
        Process {
            login_uid: sid.map(|_| 1000),
            session_id: sid,
            ..Process::from(hostwatch_proto::v1::Process::new(
                pid,
                1,
                format!("p{pid}"),
                0,
                time::OffsetDateTime::UNIX_EPOCH,
            ))
        }
    }

    fn at(s: u32) -> String {
        format!("2026-12-04T10:00:{s:02}Z")
    }

    #[test]
    fn a_session_is_known_by_both_audit_ids_and_named_by_its_user() {
        assert_eq!(subject(&proc_(5, Some(7))).as_deref(), Some("session 7 of 1000"));
        let mut named = proc_(5, Some(7));
        named.login_user = Some("alice".to_owned());
        assert_eq!(subject(&named).as_deref(), Some("session 7 of alice"));
        assert_eq!(subject(&proc_(5, None)), None);
        let mut uid_only = proc_(5, None);
        uid_only.login_uid = Some(1000);
        assert_eq!(login(&uid_only), None, "no session id: no session");
    }

    #[test]
    fn ran_lists_merge_once_each_in_order_and_keep_the_first_and_the_latest() {
        let p = proc_(1, Some(3));
        let mut d = detail(&p, None, None, vec![ran(&proc_(2, Some(3)), Some(&at(2)))]);
        let later = detail(
            &p,
            Some("10.0.0.9".parse().unwrap()),
            None,
            vec![ran(&proc_(2, Some(3)), Some(&at(2))), ran(&proc_(1, Some(3)), Some(&at(1)))],
        );
        combine(&mut d, &later);
        let pids: Vec<u64> =
            d["ran"].as_array().unwrap().iter().map(|v| v["pid"].as_u64().unwrap()).collect();
        assert_eq!(pids, [1, 2], "each once, by start");
        assert_eq!(d["from"], "10.0.0.9");
        // A later detail that does not know the peer keeps the one known.
        combine(&mut d, &detail(&p, None, None, Vec::new()));
        assert_eq!(d["from"], "10.0.0.9");

        // Past the bound: the first half and the latest half, the rest counted.
        for s in 0..3u32 {
            let batch: Vec<Value> = (0..60)
                .map(|i| ran(&proc_(100 + s * 60 + i, Some(3)), Some(&format!("{}{i:03}", at(10 + s)))))
                .collect();
            combine(&mut d, &detail(&p, None, None, batch));
        }
        let list = d["ran"].as_array().unwrap();
        assert_eq!(list.len(), MAX_RAN);
        assert_eq!(d["ran_omitted"], 182 - MAX_RAN as u64);
        assert_eq!(list[0]["pid"], 1, "the first command stays");
        assert_eq!(list[MAX_RAN - 1]["pid"], 100 + 2 * 60 + 59, "the latest stays");
    }

    #[test]
    fn the_peer_is_the_client_of_an_sshd_above_the_process() {
        let conn = |pid, remote: &str, direction| Connection {
            protocol: Protocol::Tcp,
            local: "10.0.0.1:22".parse().unwrap(),
            remote: remote.parse().unwrap(),
            direction,
            pid: Some(pid),
            process: Some("sshd".to_owned()),
            exe: None,
            uid: 0,
            netns: None,
        };
        let conns = [
            conn(40, "[::ffff:192.0.2.7]:50000", Direction::Inbound),
            conn(41, "198.51.100.1:443", Direction::Outbound),
        ];
        let peers = Peers::of(conns.iter());
        let ancestor = |pid, name: &str| Ancestor { pid, name: name.to_owned(), exe: None };
        let mut p = proc_(50, Some(3));
        p.ancestry = vec![ancestor(45, "bash"), ancestor(40, "sshd"), ancestor(30, "sshd")];
        assert_eq!(peers.of_login(&p), Some("192.0.2.7".parse().unwrap()), "mapped addresses canonical");
        // An inbound connection held by something other than an sshd says nothing of the login.
        p.ancestry = vec![ancestor(40, "nc")];
        assert_eq!(peers.of_login(&p), None);
        // Nor does an outbound one, nor a process of no login.
        p.ancestry = vec![ancestor(41, "sshd")];
        assert_eq!(peers.of_login(&p), None);
        let mut daemon = proc_(50, None);
        daemon.ancestry = vec![ancestor(40, "sshd")];
        assert_eq!(peers.of_login(&daemon), None);
    }
}
