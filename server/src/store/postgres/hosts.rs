//! Hosts in the PostgreSQL store: enrollment with a host's first node key, node keys, and a host
//! as the collector reads it.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::credentials::audit;
use super::{Col, PgStore, error, ms};
use crate::model::{AgentInfo, Host, HostFacts};
use crate::store::{Enrollment, FleetCounts, HostFilter, Page, Result, StoreError, parse_enum};

/// A host's columns, for [`host_from_row`]; `h` is the hosts table.
const HOST_COLUMNS: &str = "h.id, h.hostname, h.machine_id, h.os, h.kernel, h.arch, h.boot_time, h.tags, \
     h.agent_version, h.interval_secs, h.coverage_degraded, h.coverage_why, h.workload, h.enrolled_at, h.last_seen, \
     h.last_seq, h.goodbye, h.retired_at, \
     (SELECT COUNT(*) FROM findings f WHERE f.host_id = h.id AND f.status = 'open'), h.agent_stats, h.cloud, \
     h.reported_tags";

fn host_from_row(r: &Row) -> Result<Host> {
    let Json(tags): Json<BTreeMap<String, String>> = r.col(7)?;
    let Json(reported_tags): Json<BTreeMap<String, String>> = r.col(21)?;
    let Json(coverage_why): Json<Vec<String>> = r.col(11)?;
    let cloud: Option<serde_json::Value> = r.col(20)?;
    let stats: Option<serde_json::Value> = r.col(19)?;
    Ok(Host {
        id: r.col(0)?,
        facts: HostFacts {
            hostname: r.col(1)?,
            machine_id: r.col(2)?,
            os: r.col(3)?,
            kernel: r.col(4)?,
            arch: r.col(5)?,
            boot_time: r.col(6)?,
            tags,
            reported_tags,
            // As the SQLite store: a value another version stored that this one does not read is
            // left out rather than make the host unreadable.
            cloud: cloud.and_then(|c| serde_json::from_value(c).ok()),
        },
        agent: AgentInfo {
            version: r.col(8)?,
            interval_secs: u32::try_from(r.col::<i32>(9)?).unwrap_or_default(),
            coverage_degraded: r.col(10)?,
            coverage_why,
            stats: stats.and_then(|s| serde_json::from_value(s).ok()),
        },
        workload: r.col(12)?,
        enrolled_at: r.col(13)?,
        last_seen: r.col(14)?,
        last_seq: u64::try_from(r.col::<i64>(15)?).unwrap_or_default(),
        goodbye: r.col(16)?,
        retired_at: r.col(17)?,
        open_findings: u64::try_from(r.col::<i64>(18)?).unwrap_or_default(),
    })
}

impl PgStore {
    /// Enrolls a new host with its first node key; never reuses a host (see `Store::enroll_host`).
    pub async fn enroll_host(&self, e: &Enrollment<'_>) -> Result<i64> {
        let f = e.facts;
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO hosts (hostname, machine_id, os, kernel, arch, boot_time, tags, agent_version, \
                 enrolled_at, cloud, instance_id, reported_tags, enroll_secret_id, verified_instance_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
                &[
                    &f.hostname,
                    &f.machine_id,
                    &f.os,
                    &f.kernel,
                    &f.arch,
                    &f.boot_time.map(ms),
                    &Json(&f.tags),
                    &e.agent_version,
                    &ms(e.now),
                    &f.cloud.as_ref().map(Json),
                    &f.cloud.as_ref().map(|c| c.instance_id.clone()),
                    &Json(&f.reported_tags),
                    &e.enroll_secret,
                    &e.verified_instance,
                ],
            )
            .await
            .map_err(error)?
            .col(0)?;
        tx.execute(
            "INSERT INTO node_keys (key_hash, host_id, created_at) VALUES ($1, $2, $3)",
            &[&e.key_hash, &id, &ms(e.now)],
        )
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)?;
        Ok(id)
    }

    /// The host of a node key that exists and is not revoked, unless the host is retired.
    pub async fn find_node_key(&self, hash: &str) -> Result<Option<i64>> {
        self.one(
            "SELECT k.host_id FROM node_keys k JOIN hosts h ON h.id = k.host_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND h.retired_at IS NULL",
            &[&hash],
            |r| r.col(0),
        )
        .await
    }

    /// Revokes every node key of a host at once, audited as `revoke_host`.
    pub async fn revoke_host_keys(
        &self,
        host_id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<u64>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let Some(row) =
            tx.query_opt("SELECT hostname FROM hosts WHERE id = $1", &[&host_id]).await.map_err(error)?
        else {
            return Ok(None);
        };
        let hostname: String = row.col(0)?;
        let n = tx
            .execute(
                "UPDATE node_keys SET revoked_at = $1 WHERE host_id = $2 AND revoked_at IS NULL",
                &[&ms(now), &host_id],
            )
            .await
            .map_err(error)?;
        audit(
            &*tx,
            actor,
            "revoke_host",
            &format!("host:{host_id}"),
            &json!({ "hostname": hostname, "keys": n }),
            now,
        )
        .await?;
        tx.commit().await.map_err(error)?;
        Ok(Some(n))
    }

    /// The EC2 instance id a host proved at enrollment, if it did.
    pub async fn verified_instance(&self, host_id: i64) -> Result<Option<String>> {
        let row = self
            .one("SELECT verified_instance_id FROM hosts WHERE id = $1", &[&host_id], |r| r.col(0))
            .await?;
        Ok(row.flatten())
    }

    /// Every host, retired ones too, in id order.
    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        self.all(&format!("SELECT {HOST_COLUMNS} FROM hosts h ORDER BY h.id"), &[], host_from_row).await
    }

    /// Live findings by kind, severity and status, and each sink's events not yet delivered:
    /// what `/metrics` shows of the fleet.
    pub async fn fleet_counts(&self) -> Result<FleetCounts> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT kind, severity, status, count(*) FROM findings WHERE status IN ('open', 'acknowledged') \
                 GROUP BY kind, severity, status ORDER BY kind, severity, status",
                &[],
            )
            .await
            .map_err(error)?;
        let mut findings = Vec::with_capacity(rows.len());
        for r in &rows {
            findings.push((
                parse_enum(r.col(0)?)?,
                parse_enum(r.col(1)?)?,
                parse_enum(r.col(2)?)?,
                u64::try_from(r.col::<i64>(3)?).unwrap_or_default(),
            ));
        }
        let outbox = client
            .query(
                "SELECT c.sink, (SELECT count(*) FROM alert_events e WHERE e.id > c.last_id) \
                 FROM alert_cursors c ORDER BY c.sink",
                &[],
            )
            .await
            .map_err(error)?
            .iter()
            .map(|r| Ok((r.col(0)?, u64::try_from(r.col::<i64>(1)?).unwrap_or_default())))
            .collect::<Result<_>>()?;
        Ok(FleetCounts { findings, outbox, memory: None })
    }

    /// A page of hosts in id order, filtered by status, workload and tags (cursor: the last id
    /// given). A status is decided by `model::online_since`, the rule `Host::status` applies:
    /// the earliest report of an online host is computed here for each reporting interval the
    /// fleet has, and the query compares with it, in one snapshot of the database.
    pub async fn hosts_page(&self, f: &HostFilter) -> Result<Page<Host>> {
        use hostwatch_proto::v1::HostStatus;
        use tokio_postgres::types::ToSql;
        let after: i64 = match &f.after {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                StoreError::Query(format!(
                    "cursor {c:?} is not one this listing gave; start again without it"
                ))
            })?,
        };
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(error)?;
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(after)];
        let mut clauses = vec!["h.id > $1".to_owned()];
        /// Adds a parameter; its placeholder.
        fn arg(v: Box<dyn ToSql + Sync + Send>, params: &mut Vec<Box<dyn ToSql + Sync + Send>>) -> String {
            params.push(v);
            format!("${}", params.len())
        }
        if let Some(w) = &f.workload {
            let p = arg(Box::new(w.clone()), &mut params);
            clauses.push(format!("h.workload = {p}"));
        }
        if !f.tags.is_empty() {
            let tags: serde_json::Map<String, serde_json::Value> =
                f.tags.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str()))).collect();
            let p = arg(Box::new(serde_json::Value::Object(tags)), &mut params);
            clauses.push(format!("h.tags @> {p}"));
        }
        if f.statuses.is_empty() {
            if !f.all {
                clauses.push("h.retired_at IS NULL".to_owned());
            }
        } else {
            // Parameters only where a status needs them: PostgreSQL refuses one a statement does
            // not use.
            let mut online = String::new();
            if f.statuses.iter().any(|s| matches!(s, HostStatus::Online | HostStatus::Offline)) {
                let now = f.now.unwrap_or_else(OffsetDateTime::now_utc);
                let intervals: Vec<i32> = tx
                    .query("SELECT DISTINCT interval_secs FROM hosts", &[])
                    .await
                    .map_err(error)?
                    .iter()
                    .map(|r| r.col(0))
                    .collect::<Result<_>>()?;
                let since: Vec<OffsetDateTime> = intervals
                    .iter()
                    .map(|i| {
                        crate::model::online_since(
                            now,
                            u32::try_from(*i).unwrap_or_default(),
                            f.offline_after,
                        )
                    })
                    .collect();
                let (pi, ps) = (arg(Box::new(intervals), &mut params), arg(Box::new(since), &mut params));
                online = format!(
                    "h.last_seen IS NOT NULL AND h.last_seen >= (SELECT t.since FROM unnest({pi}::int4[], {ps}::timestamptz[]) \
                     AS t(interval_secs, since) WHERE t.interval_secs = h.interval_secs)"
                );
            }
            let live = "h.retired_at IS NULL AND h.goodbye IS NULL";
            let any: Vec<String> = f
                .statuses
                .iter()
                .map(|s| match s {
                    HostStatus::Retired => "h.retired_at IS NOT NULL".to_owned(),
                    HostStatus::Stopped => "(h.retired_at IS NULL AND h.goodbye IS NOT NULL)".to_owned(),
                    HostStatus::Online => format!("({live} AND {online})"),
                    HostStatus::Offline => format!("({live} AND NOT ({online}))"),
                })
                .collect();
            clauses.push(format!("({})", any.join(" OR ")));
        }
        let sql = format!(
            "SELECT {HOST_COLUMNS} FROM hosts h WHERE {} ORDER BY h.id LIMIT {}",
            clauses.join(" AND "),
            u64::from(f.limit) + 1
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let mut items: Vec<Host> =
            tx.query(&sql, &refs).await.map_err(error)?.iter().map(host_from_row).collect::<Result<_>>()?;
        tx.commit().await.map_err(error)?;
        let more = items.len() > f.limit as usize;
        items.truncate(f.limit as usize);
        let next = if more { items.last().map(|h| h.id.to_string()) } else { None };
        Ok(Page { items, next })
    }

    pub async fn host(&self, id: i64) -> Result<Option<Host>> {
        host_in(&self.client().await?, id).await
    }

    /// Hosts not retired with this hostname.
    pub async fn hosts_named(&self, hostname: &str) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM hosts WHERE hostname = $1 AND retired_at IS NULL ORDER BY id",
                &[&hostname],
            )
            .await
            .map_err(error)?;
        rows.iter().map(|r| r.col(0)).collect()
    }

    /// Hosts not retired, with a node key that works, claiming this machine id (and instance).
    pub async fn hosts_with_machine_id(
        &self,
        machine_id: &str,
        instance_id: Option<&str>,
    ) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM hosts h WHERE machine_id = $1 AND instance_id IS NOT DISTINCT FROM $2 \
                 AND retired_at IS NULL \
                 AND EXISTS (SELECT 1 FROM node_keys k WHERE k.host_id = h.id AND k.revoked_at IS NULL) ORDER BY id",
                &[&machine_id, &instance_id],
            )
            .await
            .map_err(error)?;
        rows.iter().map(|r| r.col(0)).collect()
    }
}

/// Reads a host in the caller's transaction.
pub(super) async fn host_in(tx: &impl GenericClient, id: i64) -> Result<Option<Host>> {
    let row = tx
        .query_opt(&format!("SELECT {HOST_COLUMNS} FROM hosts h WHERE h.id = $1"), &[&id])
        .await
        .map_err(error)?;
    row.as_ref().map(host_from_row).transpose()
}
