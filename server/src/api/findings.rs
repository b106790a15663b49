//! `GET /api/v1/findings?host=H&kind=K&status=S`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use hostwatch_proto::v1::{self as proto, FindingKind, FindingStatus};
use serde::Deserialize;

use super::ApiError;
use super::hosts::resolve_host;
use crate::auth::{Person, Role};
use crate::state::AppState;
use crate::store::FindingFilter;

#[derive(Debug, Deserialize)]
pub struct FindingsQuery {
    /// A host id or hostname.
    host: Option<String>,
    kind: Option<String>,
    /// `open`, `acknowledged`, `resolved`, a comma-separated list of those, or `all`; default
    /// `open,acknowledged`: what still needs attention.
    status: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    person: Person,
    query: Result<Query<FindingsQuery>, QueryRejection>,
) -> Result<Json<Vec<proto::Finding>>, ApiError> {
    person.require(Role::Reader)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let host_id = match &q.host {
        Some(h) => Some(resolve_host(&state, h).await?),
        None => None,
    };
    let kind = q
        .kind
        .as_deref()
        .map(str::parse::<FindingKind>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let statuses = parse_statuses(q.status.as_deref()).map_err(ApiError::bad_request)?;
    let filter = FindingFilter { host_id, kind, statuses, limit: q.limit };
    let findings = state.store.list_findings(&filter).await?;
    Ok(Json(findings.into_iter().map(Into::into).collect()))
}

fn parse_statuses(s: Option<&str>) -> Result<Vec<FindingStatus>, String> {
    match s {
        None | Some("") => Ok(vec![FindingStatus::Open, FindingStatus::Acknowledged]),
        Some("all") => Ok(Vec::new()),
        Some(list) => {
            list.split(',').map(|s| s.trim().parse::<FindingStatus>().map_err(|e| e.to_string())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(parse_statuses(None).unwrap(), vec![FindingStatus::Open, FindingStatus::Acknowledged]);
        assert_eq!(parse_statuses(Some("all")).unwrap(), vec![]);
        assert_eq!(
            parse_statuses(Some("resolved, open")).unwrap(),
            vec![FindingStatus::Resolved, FindingStatus::Open]
        );
        assert!(parse_statuses(Some("closed")).unwrap_err().contains("unknown finding status \"closed\""));
    }
}
