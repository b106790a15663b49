//! The agent's side of the wire: enroll and report over HTTP(S) to the collector.

use std::time::Duration;

use hostwatch_proto::v1::{self as proto, ENROLL_PATH, REPORT_PATH};
use reqwest::{StatusCode, Url};

use crate::config::ClientTls;
use crate::shared::config::Secret;
use crate::shared::tls::{ca_certificates, install_tls_provider};

/// Why a request to the collector did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("collector at {url} unreachable: {}", chain(.source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("collector refused the credential ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("collector rejected the {what} ({status}): {message}")]
    Rejected { what: &'static str, status: u16, message: String, retry_after: Option<Duration> },
    #[error("collector failed ({status}): {message}")]
    Server { status: u16, message: String, retry_after: Option<Duration> },
    #[error("collector sent an unreadable answer to the {what}: {message}")]
    BadResponse { what: &'static str, message: String },
    #[error("TLS file {path}: {message}")]
    Tls { path: String, message: String },
}

impl TransportError {
    /// Whether the same request may succeed later without anything changing on this side.
    pub fn is_retriable(&self) -> bool {
        match self {
            TransportError::Unreachable { .. }
            | TransportError::Server { .. }
            | TransportError::BadResponse { .. } => true,
            TransportError::Rejected { status, .. } => *status == 429 || *status == 408,
            TransportError::Unauthorized { .. } | TransportError::Tls { .. } => false,
        }
    }

    /// When the collector asked to be tried again (`Retry-After`, in seconds, at most an hour).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransportError::Rejected { retry_after, .. } | TransportError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether nothing accepted the connection (refused, connect timeout, no route): the
    /// collector is not there, as opposed to there and failing.
    pub fn is_absent(&self) -> bool {
        matches!(self, TransportError::Unreachable { source, .. } if source.is_connect())
    }
}

/// A client for one collector.
#[derive(Debug, Clone)]
pub struct CollectorClient {
    http: reqwest::Client,
    base: Url,
}

impl CollectorClient {
    /// A client that verifies the collector's certificate and name (against `tls.ca_cert` alone
    /// when given, else the system's roots) and presents `tls.client` for mutual TLS.
    pub fn new(base: Url, tls: &ClientTls) -> Result<Self, TransportError> {
        install_tls_provider();
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| TransportError::Tls { path: p.display().to_string(), message: e.to_string() })
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("hostwatch-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(ca) = &tls.ca_cert {
            builder = builder.tls_certs_only(
                ca_certificates(ca).map_err(|e| TransportError::Tls { path: e.path, message: e.message })?,
            );
        }
        if let Some((cert, key)) = &tls.client {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| TransportError::Tls {
                path: format!("{} and {}", cert.display(), key.display()),
                message: e.to_string(),
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|source| TransportError::Unreachable { url: base.to_string(), source })?;
        Ok(CollectorClient { http, base })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `GET /healthz`: the collector is there and, over https, its certificate and name verified.
    pub async fn health(&self) -> Result<(), TransportError> {
        let url = self
            .base
            .join(proto::HEALTHZ_PATH)
            .map_err(|e| TransportError::BadResponse { what: "health check", message: e.to_string() })?;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|source| TransportError::Unreachable { url: url.to_string(), source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(TransportError::Server {
            status: status.as_u16(),
            message: error_message(&bytes),
            retry_after: None,
        })
    }

    pub async fn enroll(&self, req: &proto::EnrollRequest) -> Result<proto::EnrollResponse, TransportError> {
        self.post("enrollment", ENROLL_PATH, None, req).await
    }

    pub async fn report(
        &self,
        node_key: &Secret,
        report: &proto::Report,
    ) -> Result<proto::ReportResponse, TransportError> {
        self.post("report", REPORT_PATH, Some(node_key), report).await
    }

    /// Sends a report already encoded and gzip-compressed (from the spool), saying how many are
    /// spooled behind it ([`proto::BACKLOG_HEADER`]). The collector refuses what inflates past
    /// its limit, so compression costs it no risk.
    pub async fn report_gzip(
        &self,
        node_key: &Secret,
        gzip: Vec<u8>,
        backlog: usize,
    ) -> Result<proto::ReportResponse, TransportError> {
        let headers = [(proto::BACKLOG_HEADER, backlog.to_string()), ("content-encoding", "gzip".to_owned())];
        self.send("report", REPORT_PATH, Some(node_key), gzip, &headers).await
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        bearer: Option<&Secret>,
        body: &B,
    ) -> Result<R, TransportError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| TransportError::BadResponse { what, message: e.to_string() })?;
        self.send(what, path, bearer, body, &[]).await
    }

    async fn send<R: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        bearer: Option<&Secret>,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<R, TransportError> {
        let url =
            self.base.join(path).map_err(|e| TransportError::BadResponse { what, message: e.to_string() })?;
        let mut req =
            self.http.post(url.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(key) = bearer {
            req = req.bearer_auth(key.expose());
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        // A report whose connection dies before any answer is sent once more, at once, on a new
        // connection: most often the collector closed the kept-alive connection as the report
        // went out (its idle limit and the agent's interval are both 10 s). A report is safe to
        // send twice (the collector applies a sequence number once); an enrollment is not.
        let again = (path == REPORT_PATH).then(|| req.try_clone()).flatten();
        let resp = match (req.send().await, again) {
            (Err(e), Some(again)) if died_before_answer(&e) => again.send().await,
            (sent, _) => sent,
        }
        .map_err(|source| TransportError::Unreachable { url: url.to_string(), source })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| TransportError::Unreachable { url: url.to_string(), source })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| TransportError::BadResponse { what, message: e.to_string() });
        }
        let message = error_message(&bytes);
        let code = status.as_u16();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                TransportError::Unauthorized { status: code, message }
            }
            s if s.is_server_error() => TransportError::Server { status: code, message, retry_after },
            _ => TransportError::Rejected { what, status: code, message, retry_after },
        })
    }
}

/// Whether a request failed on a connection that was made but gave no answer (reset, closed
/// mid-request), rather than on one never made or one too slow.
fn died_before_answer(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_connect() && !e.is_timeout()
}

/// An error with its causes, `: `-separated: a library's own message (reqwest's "error sending
/// request", aya's "the BPF_PROG_LOAD syscall failed") hides what an operator needs (a refused
/// connection, an unknown certificate issuer, EPERM for want of CAP_BPF).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The collector's `{"error": ...}` message, or the start of whatever else it sent.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<proto::ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            crate::collect::process::truncate(text.trim(), 200).to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        assert_eq!(error_message(br#"{"error":"bad node key"}"#), "bad node key");
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        let busy = TransportError::Server { status: 503, message: String::new(), retry_after: None };
        assert!(busy.is_retriable() && !busy.is_absent());
        let bad = TransportError::Rejected {
            what: "report",
            status: 400,
            message: String::new(),
            retry_after: None,
        };
        assert!(!bad.is_retriable());
    }

    #[tokio::test]
    async fn unreachable_collector_is_retriable() {
        // A port from a listener that is closed again: nothing accepts there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = CollectorClient::new(
            Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            &ClientTls::default(),
        )
        .unwrap();
        let e = c.report(&Secret::new("k"), &sample_report()).await.unwrap_err();
        assert!(matches!(e, TransportError::Unreachable { .. }) && e.is_retriable(), "{e}");
        assert!(e.is_absent(), "nothing accepted the connection: {e:?}");
        // The message carries the cause an operator needs, not only reqwest's summary.
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn a_collector_that_accepts_and_hangs_up_is_there_not_absent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Every connection (the report's, and the one it is sent once more on).
        let hang_up = tokio::spawn(async move {
            for _ in 0..2 {
                let (conn, _) = listener.accept().await.unwrap();
                drop(conn);
            }
        });
        let c = CollectorClient::new(
            Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            &ClientTls::default(),
        )
        .unwrap();
        let e = c.report(&Secret::new("k"), &sample_report()).await.unwrap_err();
        hang_up.await.unwrap();
        assert!(e.is_retriable() && !e.is_absent(), "{e:?}");
    }

    /// A collector that closes a kept-alive connection just as the next report goes out on it
    /// (its idle limit racing the agent's interval): the report is sent again on a new
    /// connection and taken, not failed.
    #[tokio::test]
    async fn a_report_on_a_connection_closed_under_it_is_sent_again_on_a_new_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        /// Reads one request (head and a Content-Length body); false at end of stream.
        async fn read_request(conn: &mut tokio::net::TcpStream) -> bool {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return true;
                }
            }
        }
        let ok = |seq: u64| {
            let body = serde_json::to_vec(&proto::ReportResponse { host_id: 1, seq, resync: false }).unwrap();
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        };
        let server = tokio::spawn(async move {
            // The first connection: one report answered, the next read and hung up on.
            let (mut first, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut first).await);
            first.write_all(&ok(1)).await.unwrap();
            assert!(read_request(&mut first).await, "the second report came on the kept connection");
            drop(first);
            // The second: the same report again, answered (not waited for long: without the
            // second sending there is no second connection, and the client's error says so).
            let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
            let (mut second, _) = accepted.expect("the report sent again").unwrap();
            assert!(read_request(&mut second).await);
            second.write_all(&ok(2)).await.unwrap();
        });
        let c = CollectorClient::new(
            Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            &ClientTls::default(),
        )
        .unwrap();
        assert_eq!(c.report(&Secret::new("k"), &sample_report()).await.unwrap().seq, 1);
        let again = c.report(&Secret::new("k"), &sample_report()).await;
        assert_eq!(again.expect("sent again on a new connection").seq, 2);
        server.await.unwrap();
    }

    fn sample_report() -> proto::Report {
        let now = time::OffsetDateTime::now_utc();
        proto::Report::heartbeat(
            0,
            1,
            now,
            proto::HostFacts::new("h", "m"),
            proto::AgentStatus::new("0", 10, now),
        )
    }
}
