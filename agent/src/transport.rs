//! The agent's side of the wire: enroll and report over HTTP(S) to the collector.

use std::time::Duration;

use hostwatch_proto::v1::{self as proto, ENROLL_PATH, REPORT_PATH};
use reqwest::{StatusCode, Url};

use crate::config::Secret;

/// Why a request to the collector did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("collector at {url} unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("collector refused the credential ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("collector rejected the {what} ({status}): {message}")]
    Rejected { what: &'static str, status: u16, message: String },
    #[error("collector failed ({status}): {message}")]
    Server { status: u16, message: String },
    #[error("collector sent an unreadable answer to the {what}: {message}")]
    BadResponse { what: &'static str, message: String },
}

impl TransportError {
    /// Whether the same request may succeed later without anything changing on this side.
    pub fn is_retriable(&self) -> bool {
        match self {
            TransportError::Unreachable { .. }
            | TransportError::Server { .. }
            | TransportError::BadResponse { .. } => true,
            TransportError::Rejected { status, .. } => *status == 429 || *status == 408,
            TransportError::Unauthorized { .. } => false,
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

/// Installs the process's TLS provider (ring) once; later calls are no-ops.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl CollectorClient {
    pub fn new(base: Url) -> Result<Self, TransportError> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("hostwatch-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| TransportError::Unreachable { url: base.to_string(), source })?;
        Ok(CollectorClient { http, base })
    }

    pub fn base(&self) -> &Url {
        &self.base
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

    /// Sends a report already encoded (from the spool), saying how many are spooled behind it
    /// ([`proto::BACKLOG_HEADER`]).
    pub async fn report_bytes(
        &self,
        node_key: &Secret,
        body: Vec<u8>,
        backlog: usize,
    ) -> Result<proto::ReportResponse, TransportError> {
        self.send(
            "report",
            REPORT_PATH,
            Some(node_key),
            body,
            &[(proto::BACKLOG_HEADER, backlog.to_string())],
        )
        .await
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
        let resp = req
            .send()
            .await
            .map_err(|source| TransportError::Unreachable { url: url.to_string(), source })?;
        let status = resp.status();
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
            s if s.is_server_error() => TransportError::Server { status: code, message },
            _ => TransportError::Rejected { what, status: code, message },
        })
    }
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
        assert!(TransportError::Server { status: 503, message: String::new() }.is_retriable());
        assert!(
            !TransportError::Rejected { what: "report", status: 400, message: String::new() }.is_retriable()
        );
    }

    #[tokio::test]
    async fn unreachable_collector_is_retriable() {
        // A port from a listener that is closed again: nothing accepts there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = CollectorClient::new(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()).unwrap();
        let e = c.report(&Secret::new("k"), &sample_report()).await.unwrap_err();
        assert!(matches!(e, TransportError::Unreachable { .. }) && e.is_retriable(), "{e}");
        assert!(e.is_absent(), "nothing accepted the connection: {e:?}");
    }

    #[tokio::test]
    async fn a_collector_that_accepts_and_hangs_up_is_there_not_absent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hang_up = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            drop(conn);
        });
        let c = CollectorClient::new(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()).unwrap();
        let e = c.report(&Secret::new("k"), &sample_report()).await.unwrap_err();
        hang_up.await.unwrap();
        assert!(e.is_retriable() && !e.is_absent(), "{e:?}");
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
