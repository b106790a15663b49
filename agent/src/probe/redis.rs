//! Redis (and Valkey, KeyDB): `PING`, then `INFO server`. Neither writes; a Redis without a
//! password answers both, one with a password answers `-NOAUTH`, and one in protected mode
//! without a password answers a client from another address `-DENIED` (and loopback clients
//! everything).

use std::time::Duration;

use hostwatch_proto::v1::AuthVerdict;

use super::wire::{self, printable_bytes};
use super::{Job, Outcome};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const INFO: &[u8] = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n";

pub async fn probe(job: &Job, timeout: Duration) -> Outcome {
    let deadline = wire::deadline(timeout);
    let mut s = match wire::connect(job.target, deadline).await {
        Ok(s) => s,
        Err(e) => return e.outcome("the connection"),
    };
    let mut buf = Vec::new();
    if let Err(e) = wire::send(&mut s, PING, deadline).await {
        return e.outcome("PING");
    }
    let ping = match wire::read_until(&mut s, &mut buf, deadline, |b| parse(b).is_some()).await {
        Ok(()) => parse(&buf),
        Err(wire::Silence::Closed(said)) => parse(&said),
        Err(e) => return e.outcome("PING"),
    };
    match ping {
        Some((Reply::Simple(s), _)) if s.eq_ignore_ascii_case("PONG") => {}
        Some((Reply::Error(e), _)) => return judge_refusal("PING", &e, job.loopback_only),
        Some((other, _)) => {
            return Outcome::new(
                AuthVerdict::Unknown,
                format!("not Redis: PING answered {}", other.describe()),
            );
        }
        None => {
            return Outcome::new(
                AuthVerdict::Unknown,
                format!("not Redis: PING answered {:?}", printable_bytes(&buf, 60)),
            );
        }
    }
    buf.clear();
    if let Err(e) = wire::send(&mut s, INFO, deadline).await {
        return e.outcome("INFO");
    }
    let info = match wire::read_until(&mut s, &mut buf, deadline, |b| parse(b).is_some()).await {
        Ok(()) => parse(&buf),
        Err(e) => {
            return Outcome::new(
                AuthVerdict::Unauthenticated,
                format!("PING answered without credentials; {}", e.outcome("INFO").reason),
            );
        }
    };
    match info {
        Some((Reply::Bulk(text), _)) => {
            let version = field(&text, "redis_version").or_else(|| field(&text, "valkey_version"));
            let version =
                version.map(|v| format!(" (version {})", wire::printable(&v, 32))).unwrap_or_default();
            Outcome::new(
                AuthVerdict::Unauthenticated,
                format!("PING and INFO answered without credentials{version}"),
            )
        }
        Some((Reply::Error(e), _)) => Outcome::new(
            AuthVerdict::Unauthenticated,
            format!("PING answered without credentials; INFO refused ({})", wire::printable(&e, 80)),
        ),
        _ => Outcome::new(
            AuthVerdict::Unauthenticated,
            "PING answered without credentials; INFO answered something else",
        ),
    }
}

/// An error reply to the first command: a password asked for, protected mode, or no verdict.
fn judge_refusal(what: &str, error: &str, loopback_only: bool) -> Outcome {
    let word = error.split_whitespace().next().unwrap_or_default();
    let short = wire::printable(error, 100);
    match word {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => Outcome::new(
            AuthVerdict::Authenticated,
            format!("{what} answered -{short}: credentials are required"),
        ),
        // Protected mode answers only clients from elsewhere so: this host's clients need nothing.
        "DENIED" if !loopback_only => Outcome::new(
            AuthVerdict::LocalOnly,
            "protected mode: refuses clients from other addresses; this host's clients need no password",
        ),
        _ => Outcome::new(AuthVerdict::Unknown, format!("{what} answered -{short}")),
    }
}

/// The value of `name:` in an INFO text.
fn field(text: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(text).lines().find_map(|l| {
        l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')).map(|v| v.trim().to_owned())
    })
}

/// One RESP reply, as much as a probe needs of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    /// A bulk string: its bytes, or as many as were read when it is larger than a probe reads.
    Bulk(Vec<u8>),
    Nil,
    /// Anything else (an integer, an array, a RESP3 type): its first line.
    Other(String),
}

impl Reply {
    fn describe(&self) -> String {
        match self {
            Reply::Simple(s) => format!("+{}", wire::printable(s, 60)),
            Reply::Error(s) => format!("-{}", wire::printable(s, 60)),
            Reply::Bulk(b) => format!("a bulk string of {} bytes", b.len()),
            Reply::Nil => "nil".to_owned(),
            Reply::Other(s) => format!("{:?}", wire::printable(s, 60)),
        }
    }
}

/// Parses the reply at the start of `buf`: `None` until it is whole (a bulk string counts as
/// whole once a probe's fill of it is read); the reply and the bytes it took.
pub fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(buf.get(1..line_end).unwrap_or_default()).into_owned();
    let after = line_end + 2;
    match buf.first()? {
        b'+' => Some((Reply::Simple(line), after)),
        b'-' => Some((Reply::Error(line), after)),
        b'$' => {
            let len: i64 = line.trim().parse().ok()?;
            if len < 0 {
                return Some((Reply::Nil, after));
            }
            let len = usize::try_from(len).ok()?;
            let end = after.checked_add(len)?;
            if buf.len() >= end {
                Some((Reply::Bulk(buf[after..end].to_vec()), end.saturating_add(2).min(buf.len())))
            } else if buf.len() >= super::READ_MAX {
                Some((Reply::Bulk(buf[after..].to_vec()), buf.len()))
            } else {
                None
            }
        }
        _ => Some((Reply::Other(String::from_utf8_lossy(&buf[..line_end]).into_owned()), after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        assert_eq!(parse(b"+PONG\r\n"), Some((Reply::Simple("PONG".into()), 7)));
        assert_eq!(parse(b"+PON"), None);
        assert_eq!(
            parse(b"-NOAUTH Authentication required.\r\n").unwrap().0,
            Reply::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(parse(b"$5\r\nhel"), None);
        assert_eq!(parse(b"$5\r\nhello\r\n"), Some((Reply::Bulk(b"hello".to_vec()), 11)));
        assert_eq!(parse(b"$-1\r\n").unwrap().0, Reply::Nil);
        assert_eq!(parse(b"$99999999999999999999\r\n"), None);
        assert_eq!(parse(b":1\r\n").unwrap().0, Reply::Other(":1".into()));
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"\r\n").unwrap().0, Reply::Other(String::new()));
    }

    #[test]
    fn refusals_are_told_apart() {
        assert_eq!(
            judge_refusal("PING", "NOAUTH Authentication required.", false).verdict,
            AuthVerdict::Authenticated
        );
        assert_eq!(
            judge_refusal("PING", "DENIED Redis is running in protected mode", false).verdict,
            AuthVerdict::LocalOnly
        );
        assert_eq!(judge_refusal("PING", "ERR unknown command", false).verdict, AuthVerdict::Unknown);
    }

    #[test]
    fn info_fields() {
        assert_eq!(
            field(b"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n", "redis_version")
                .as_deref(),
            Some("7.0.15")
        );
        assert_eq!(field(b"x:1", "redis_version"), None);
    }
}
