//! Delivering one event to one sink: a JSON line to a file or stdout, or an HTTP POST.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use serde::Serialize;
use time::OffsetDateTime;

use super::Target;
use crate::model::AlertEvent;

/// What a sink receives: one JSON object per event.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    /// `opened`, `reopened`, `escalated` or `resolved`.
    pub event: String,
    #[serde(with = "proto::timestamp")]
    pub at: OffsetDateTime,
    /// The outbox position: a receiver that sees one twice (a collector crashed between a
    /// delivery and moving its cursor) can tell.
    pub event_id: i64,
    pub finding: proto::Finding,
}

impl Payload {
    pub fn of(e: &AlertEvent) -> Payload {
        Payload { event: e.event.clone(), at: e.at, event_id: e.id, finding: e.finding.clone().into() }
    }

    /// One line for a chat channel. Hostnames and subjects come from agents: `&`, `<` and `>`
    /// are escaped as Slack asks, so none can mention a channel or plant a link.
    fn text(&self) -> String {
        let f = &self.finding;
        let rule = f.rule.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!(
            "[{}] {} {}{} on {}: {} (finding {})",
            f.severity.as_str().to_uppercase(),
            f.kind,
            self.event,
            rule,
            slack_escape(&f.hostname),
            slack_escape(&f.subject),
            f.id
        )
    }
}

/// Why a delivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: the receiver is down, slow, or busy.
    #[error("{0}")]
    Failed(String),
    /// The receiver refused this payload (a 4xx other than 408 and 429): trying again will not help.
    #[error("{0}")]
    Refused(String),
}

/// A sink's open end.
pub enum Sender {
    File(std::fs::File, std::path::PathBuf),
    Stdout,
    Webhook { http: reqwest::Client, url: reqwest::Url, slack: bool },
}

impl Sender {
    pub fn new(target: &Target) -> Result<Sender, String> {
        Ok(match target {
            Target::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Sender::File(f, path.clone())
            }
            Target::Stdout => Sender::Stdout,
            Target::Webhook { url, slack } => {
                hostwatch_agent::shared::tls::install_tls_provider();
                let http = reqwest::Client::builder()
                    .user_agent(concat!("hostwatch/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                Sender::Webhook { http, url: url.clone(), slack: *slack }
            }
        })
    }

    pub async fn send(&mut self, p: &Payload) -> Result<(), SendError> {
        match self {
            Sender::File(f, path) => {
                let mut line = serde_json::to_vec(p).map_err(|e| SendError::Refused(e.to_string()))?;
                line.push(b'\n');
                // One write of a whole line: lines from one sink never interleave.
                f.write_all(&line)
                    .map_err(|e| SendError::Failed(format!("cannot write {}: {e}", path.display())))
            }
            Sender::Stdout => {
                let line = serde_json::to_string(p).map_err(|e| SendError::Refused(e.to_string()))?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|e| SendError::Failed(e.to_string()))
            }
            Sender::Webhook { http, url, slack } => {
                let req = if *slack {
                    http.post(url.clone()).json(&serde_json::json!({ "text": p.text() }))
                } else {
                    http.post(url.clone()).json(p)
                };
                // Errors name the host only: a hook's path often is its secret.
                let host = url.host_str().unwrap_or("?").to_owned();
                let resp = req
                    .send()
                    .await
                    .map_err(|e| SendError::Failed(format!("{host}: {}", e.without_url())))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Err(SendError::Refused(format!("{host} answered {status}")))
                } else {
                    Err(SendError::Failed(format!("{host} answered {status}")))
                }
            }
        }
    }
}

/// Text as Slack's message formatting takes it literally.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_escapes_what_agents_wrote() {
        let finding = crate::model::Finding {
            occurrences: 1,
            transient: false,
            id: 7,
            host_id: 1,
            hostname: "web-1".into(),
            kind: proto::FindingKind::UnexpectedProcess,
            rule: None,
            severity: proto::Severity::High,
            subject: "/tmp/<!channel> & <https://evil|Approve>".into(),
            detail: serde_json::json!({}),
            status: proto::FindingStatus::Open,
            first_seen: OffsetDateTime::UNIX_EPOCH,
            last_seen: OffsetDateTime::UNIX_EPOCH,
            resolved_at: None,
            silenced: false,
            acked_by: None,
            acked_at: None,
            ack_note: None,
        };
        let e = AlertEvent {
            id: 3,
            event: "opened".into(),
            silenced: false,
            at: OffsetDateTime::UNIX_EPOCH,
            finding,
        };
        assert_eq!(
            Payload::of(&e).text(),
            "[HIGH] unexpected_process opened on web-1: /tmp/&lt;!channel&gt; &amp; &lt;https://evil|Approve&gt; (finding 7)"
        );
    }
}
