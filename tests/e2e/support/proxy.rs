//! A faulty link between agents and a collector: an HTTP/1.1 proxy on a free loopback port that
//! passes requests through, answers them itself with an error, or passes them only after a delay,
//! as a test switches it. Every request it saw is recorded with when and how it was answered, so
//! a test can tell how agents behaved while the collector was failing (their backoff).
//!
//! It speaks just what agents send: a request head, then a body of `Content-Length` bytes. Each
//! request goes to the collector on a connection of its own (`Connection: close`), so a switch of
//! mode applies from the next request on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// To the collector and back.
    Pass,
    /// Answered with this status (a JSON error body, no `Retry-After`), the collector never asked.
    Fail(u16),
    /// To the collector after this long.
    Slow(Duration),
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    /// What the agent was answered; 0 when the collector could not be reached.
    pub status: u16,
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts passing requests to the collector at `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                tokio::spawn(serve(client, upstream, m.clone(), s.clone()));
            }
        });
        FaultProxy { port, mode, seen, task }
    }

    /// The URL agents are given.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The requests of one agent connection, one after the other.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut client, &mut buf).await {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let now = *mode.lock().expect("mode lock");
        let (status, answer) = match now {
            Mode::Fail(code) => {
                let text = format!("{{\"error\":\"the test's proxy answers {code}\"}}");
                let answer = format!(
                    "HTTP/1.1 {code} Test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                (code, answer.into_bytes())
            }
            Mode::Slow(wait) => {
                tokio::time::sleep(wait).await;
                forward(upstream, &head, &body).await
            }
            Mode::Pass => forward(upstream, &head, &body).await,
        };
        seen.lock().expect("seen lock").push(Seen { at: Instant::now(), path, status });
        if status == 0 || client.write_all(&answer).await.is_err() {
            return;
        }
        if answer.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close")) {
            return;
        }
    }
}

/// One request: its head (up to the blank line, as text) and its body. `None` at the end of the
/// connection or on anything but a well-formed request.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .map_or(Some(0), |v| v.parse().ok())?;
    while buf.len() < end + 4 + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end + 4..end + 4 + len].to_vec();
    buf.drain(..end + 4 + len);
    Some((head, body))
}

/// The request sent to the collector on a connection of its own, and its whole answer (read to
/// the connection's end): its status and bytes; status 0 if the collector could not be reached.
async fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let Ok(mut conn) = TcpStream::connect(upstream).await else { return (0, Vec::new()) };
    let mut request: Vec<u8> = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
        .collect();
    request.extend_from_slice(b"connection: close\r\n\r\n");
    request.extend_from_slice(body);
    if conn.write_all(&request).await.is_err() {
        return (0, Vec::new());
    }
    let mut answer = Vec::new();
    if conn.read_to_end(&mut answer).await.is_err() {
        return (0, Vec::new());
    }
    let status = std::str::from_utf8(&answer[..answer.len().min(12)])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
