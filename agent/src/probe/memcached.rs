//! Memcached: the text protocol's `stats`, which reads counters and changes nothing. Without
//! authentication it lists them; with an auth file (`-Y`) every command before `set` of the
//! credentials is answered `CLIENT_ERROR unauthenticated`.

use std::net::SocketAddr;
use std::time::Duration;

use hostwatch_proto::v1::AuthVerdict;

use super::Outcome;
use super::wire::{self, printable_bytes};

const STATS: &[u8] = b"stats\r\n";

pub async fn probe(target: SocketAddr, timeout: Duration) -> Outcome {
    let deadline = wire::deadline(timeout);
    let mut s = match wire::connect(target, deadline).await {
        Ok(s) => s,
        Err(e) => return e.outcome("the connection"),
    };
    if let Err(e) = wire::send(&mut s, STATS, deadline).await {
        return e.outcome("stats");
    }
    let mut buf = Vec::new();
    let said = match wire::read_until(&mut s, &mut buf, deadline, whole).await {
        Ok(()) => buf,
        Err(wire::Silence::Closed(said)) if !said.is_empty() => said,
        Err(e) => return e.outcome("stats"),
    };
    judge(&said)
}

/// A `stats` answer ends with `END`, or is one error line.
fn whole(b: &[u8]) -> bool {
    b.ends_with(b"END\r\n")
        || (b.ends_with(b"\r\n")
            && (b.starts_with(b"CLIENT_ERROR") || b.starts_with(b"ERROR") || b.starts_with(b"SERVER_ERROR")))
}

pub fn judge(said: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(said);
    if text.starts_with("STAT ") {
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("STAT version "))
            .map(|v| format!(" (version {})", wire::printable(v.trim(), 32)))
            .unwrap_or_default();
        return Outcome::new(
            AuthVerdict::Unauthenticated,
            format!("stats answered without credentials{version}"),
        );
    }
    if text.starts_with("CLIENT_ERROR unauthenticated") || text.starts_with("CLIENT_ERROR authentication") {
        return Outcome::new(
            AuthVerdict::Authenticated,
            "stats answered CLIENT_ERROR unauthenticated: credentials are required",
        );
    }
    Outcome::new(
        AuthVerdict::Unknown,
        format!("not memcached's text protocol: stats answered {:?}", printable_bytes(said, 60)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged() {
        let open = judge(b"STAT pid 12\r\nSTAT version 1.6.18\r\nEND\r\n");
        assert_eq!(open.verdict, AuthVerdict::Unauthenticated);
        assert!(open.reason.contains("1.6.18"), "{}", open.reason);
        assert_eq!(judge(b"CLIENT_ERROR unauthenticated\r\n").verdict, AuthVerdict::Authenticated);
        assert_eq!(judge(b"HTTP/1.1 400 Bad Request\r\n").verdict, AuthVerdict::Unknown);
        assert!(whole(b"STAT a 1\r\nEND\r\n") && !whole(b"STAT a 1\r\n") && whole(b"ERROR\r\n"));
    }
}
