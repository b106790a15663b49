//! `POST /api/v1/enroll` and `POST /api/v1/report`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use hostwatch_proto::v1::{self as proto, NODE_KEY_PREFIX, Validate};
use serde_json::json;
use time::OffsetDateTime;

use super::{ApiError, decode, read_body};
use crate::admission::Refusal;
use crate::auth::{self, Agent};
use crate::metrics::log_refusal;
use crate::model::{HostFacts, ReportRecord};
use crate::state::{self, AppState};
use crate::store::Enrollment;
use crate::{engine, ingest, secrets, tags};

/// The agent's [`proto::BACKLOG_HEADER`]: absent is none; anything but a decimal number up to
/// [`proto::MAX_BACKLOG`] is refused, named.
fn backlog(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get(proto::BACKLOG_HEADER) else { return Ok(0) };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n <= proto::MAX_BACKLOG)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "header {}: not a number of reports from 0 to {}",
                proto::BACKLOG_HEADER,
                proto::MAX_BACKLOG
            ))
        })
}

/// Largest enrollment body: host facts and a secret.
pub const ENROLL_LIMIT: usize = 64 << 10;

/// How long a read report may wait for a processing turn before the agent is told to come back.
const REPORT_QUEUE_WAIT: Duration = Duration::from_secs(10);

pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::EnrollResponse>, ApiError> {
    let result = enroll_host(&state, peer, &headers, body).await;
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    state.metrics.enrollment(status);
    if let Err(e) = &result {
        let why = format!("from {peer}: {}", e.message);
        log_refusal(&state.metrics.enrollment_refusals, "enrollment", status, None, &why);
    }
    result.map(Json)
}

async fn enroll_host(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<proto::EnrollResponse, ApiError> {
    if let Err(refusal) = state.admission.enrollment(peer.ip()) {
        return Err(ApiError::too_many(
            "too many enrollments from this address; retry later",
            refusal.retry_after(),
        ));
    }
    let body = read_body(state, headers, body, "enrollment", ENROLL_LIMIT).await?;
    let req: proto::EnrollRequest = decode(state, "enrollment", &body.bytes)?;
    req.validate().map_err(|e| ApiError::bad_request(format!("invalid enrollment: {e}")))?;
    let secret = auth::check_enroll_secret(state, &req.enroll_secret).await?;
    let key = secrets::generate(NODE_KEY_PREFIX)
        .map_err(|e| ApiError::internal(format!("cannot generate a node key: {e}")))?;
    // Where EC2 claims must be proven, an unproven one enrolls nothing (logged with the other
    // refusals, at a bounded rate, by `enroll`).
    let verified = match &state.settings.aws_identity {
        Some(aws) => aws
            .verify(req.host.cloud.as_ref(), req.instance_identity.as_ref())
            .map_err(|e| ApiError::forbidden(format!("instance identity: {e}")))?,
        None => None,
    };
    let mut facts: HostFacts = req.host.into();
    facts.tags = tags::at_enrollment(&facts.reported_tags, &secret.tags);
    let now = OffsetDateTime::now_utc();
    let key_hash = secrets::hash(key.expose());
    let host_id = state
        .store
        .enroll_host(&Enrollment {
            facts: &facts,
            agent_version: &req.agent.version,
            key_hash: &key_hash,
            enroll_secret: secret.id,
            verified_instance: verified.as_deref(),
            now,
        })
        .await?;
    state
        .store
        .audit(
            &format!("agent:{}", facts.hostname),
            "enroll",
            &format!("host:{host_id}"),
            json!({ "machine_id": facts.machine_id, "secret": secret.id, "tags": facts.tags }),
            now,
        )
        .await?;
    tracing::info!(host_id, hostname = ?facts.hostname, "host enrolled");
    let instance = facts.cloud.as_ref().map(|c| c.instance_id.as_str());
    let same_machine = state.store.hosts_with_machine_id(&facts.machine_id, instance).await?;
    if let Some(dup) = engine::duplicate_identity(&facts.machine_id, &same_machine) {
        tracing::warn!(machine_id = ?facts.machine_id, hosts = ?same_machine, "several hosts enrolled under one machine id");
        for id in &same_machine {
            state
                .store
                .record_findings(
                    *id,
                    std::slice::from_ref(&dup),
                    state.settings.max_new_findings_per_minute,
                    now,
                )
                .await?;
        }
    }
    Ok(proto::EnrollResponse { host_id, node_key: key.expose().to_owned() })
}

/// A report: admitted (one per host at a time, within its rate) before its body is read, given a
/// processing turn only once the body is read whole, so that a slow sender holds no turn. Every
/// report is counted by how it ended, those refused at its credential too (an unknown key, a
/// store too busy to look it up).
pub async fn report(
    State(state): State<AppState>,
    agent: Result<Agent, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::ReportResponse>, ApiError> {
    let started = Instant::now();
    let host_id = agent.as_ref().ok().map(|a| a.host_id);
    let result = match agent {
        Err(refused) => Err(refused),
        Ok(agent) => admit(&state, agent, &headers, body).await,
    };
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    state.metrics.report(status, started.elapsed());
    if let Err(e) = &result {
        log_refusal(&state.metrics.report_refusals, "report", status, host_id, &e.message);
    }
    result.map(Json)
}

async fn admit(
    state: &AppState,
    agent: Agent,
    headers: &HeaderMap,
    body: Body,
) -> Result<proto::ReportResponse, ApiError> {
    match state.admission.report(agent.host_id) {
        Ok(_in_flight) => {
            tracing::debug!(host_id = agent.host_id, "report admitted; reading its body");
            accept(state, agent, headers, body).await
        }
        Err(refusal) => {
            let why = match refusal {
                Refusal::Busy => "another report of this host is being received or processed",
                Refusal::Rate(_) => "this host sends reports faster than its rate",
            };
            Err(ApiError::too_many(format!("{why}; retry later"), refusal.retry_after()))
        }
    }
}

async fn accept(
    state: &AppState,
    agent: Agent,
    headers: &HeaderMap,
    body: Body,
) -> Result<proto::ReportResponse, ApiError> {
    let backlog = backlog(headers)?;
    let body = read_body(state, headers, body, "report", state.settings.max_report_bytes).await?;
    // A report takes a share of a turn by its size: a full-size snapshot a whole turn, a small
    // delta or heartbeat one share, so that a fleet's small reports can run many at once (and
    // commit together) while decoded reports stay within max_concurrent_reports full ones.
    let shares = state::turn_shares(body.bytes.len(), state.settings.max_report_bytes);
    let _turn = match tokio::time::timeout(
        REPORT_QUEUE_WAIT,
        state.report_permits.clone().acquire_many_owned(shares),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(ApiError {
                retry_after: Some(Duration::from_secs(5)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "collector busy with other reports; retry later",
                )
            });
        }
    };
    let report: proto::Report = decode(state, "report", &body.bytes)?;
    drop(body);
    report.validate().map_err(|e| ApiError::bad_request(format!("invalid report: {e}")))?;
    if state.settings.aws_identity.is_some()
        && let Some(proven) = state.store.verified_instance(agent.host_id).await?
    {
        // The key was issued to the instance that proved itself: another instance's facts under
        // it are someone posing. 403 makes a real agent enroll again, proving where it is now.
        // (No claim at all, as while the metadata service is unreachable, poses as nobody.)
        if let Some(claimed) = report.host.cloud.as_ref().map(|c| c.instance_id.as_str())
            && claimed != proven
        {
            return Err(ApiError::forbidden(format!(
                "this node key was issued to EC2 instance {proven:?}; the report claims {claimed:?}"
            )));
        }
    }
    let seq = report.seq;
    let record = ReportRecord { backlog, ..ReportRecord::from(report) };
    let resync = ingest::ingest(state, agent.host_id, record).await?;
    Ok(proto::ReportResponse { host_id: agent.host_id, seq, resync })
}
