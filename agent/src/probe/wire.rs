//! A probe's one connection: connected, asked and read within a deadline, never more than
//! [`READ_MAX`](super::READ_MAX) bytes read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Outcome, READ_MAX};

/// Why a conversation ended without an answer to judge.
#[derive(Debug)]
pub enum Silence {
    /// The connection was refused or reset before it was made.
    Refused(std::io::Error),
    /// Nothing (or not enough) came back in time.
    Timeout,
    /// The service closed the connection; what it had said before is kept.
    Closed(Vec<u8>),
    Io(std::io::Error),
}

impl Silence {
    /// The verdict where the service said nothing to judge.
    pub fn outcome(&self, what: &str) -> Outcome {
        let why = match self {
            Silence::Refused(e) => format!("cannot connect: {e}"),
            Silence::Timeout => format!("no answer to {what} in time"),
            Silence::Closed(said) if said.is_empty() => {
                format!("the service closed the connection at {what}")
            }
            Silence::Closed(said) => {
                format!("the service closed the connection after {:?}", printable_bytes(said, 80))
            }
            Silence::Io(e) => format!("{what}: {e}"),
        };
        Outcome::unknown(why)
    }
}

/// Connects within what is left of `deadline`.
pub async fn connect(target: SocketAddr, deadline: Instant) -> Result<TcpStream, Silence> {
    match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Silence::Refused(e)),
        Err(_) => Err(Silence::Timeout),
    }
}

/// Sends `bytes` whole within what is left of `deadline`.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8], deadline: Instant) -> Result<(), Silence> {
    match tokio::time::timeout_at(deadline, s.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Silence::Io(e)),
        Err(_) => Err(Silence::Timeout),
    }
}

/// Reads into `buf` until `done` says the answer is whole (given what was read so far), the
/// service closes, [`READ_MAX`] bytes were read, or `deadline` passes. `done` returns whether
/// the answer is complete; a full buffer is handed back as it is for `done`'s caller to judge.
pub async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(), Silence> {
    let mut chunk = [0u8; 8192];
    loop {
        if done(buf) || buf.len() >= READ_MAX {
            return Ok(());
        }
        let want = chunk.len().min(READ_MAX - buf.len());
        match tokio::time::timeout_at(deadline, s.read(&mut chunk[..want])).await {
            Ok(Ok(0)) => return Err(Silence::Closed(std::mem::take(buf))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(Silence::Io(e)),
            Err(_) => return Err(Silence::Timeout),
        }
    }
}

/// The deadline of a probe that may take `timeout`.
pub fn deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// `s` as a short line a person can read and any output can carry: control characters shown
/// escaped, at most `max` bytes (cut on a character boundary).
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let piece: String = if c.is_control() { c.escape_default().collect() } else { c.to_string() };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// Bytes a service sent, as [`printable`] text.
pub fn printable_bytes(b: &[u8], max: usize) -> String {
    printable(&String::from_utf8_lossy(&b[..b.len().min(max * 4)]), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_service_says_is_kept_short_and_printable() {
        assert_eq!(printable("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("éééé", 5), "éé");
        assert_eq!(printable_bytes(b"\xff\xfeok", 20), "\u{fffd}\u{fffd}ok");
    }
}
