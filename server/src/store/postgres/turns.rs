//! Turns among the collectors sharing one database: a host's turn (a report and its verdict, a
//! host's chores) and the chores' turn, each a session-level advisory lock held on a connection
//! of a pool of their own for as long as the turn lasts.
//!
//! Invariants:
//! - turns use their own pool, so a turn waiting for a connection never holds one that the
//!   transactions of the turn need (with one pool, turns alone could take every connection);
//! - a lock being waited for is not given up by the caller going away: the wait runs in a task
//!   of its own, and a lock it gets that nobody takes is released at once;
//! - a turn is released when its guard drops, and a collector that dies releases its turns
//!   with its connections (PostgreSQL ends the session);
//! - waits are bounded (`lock_timeout`): a turn not had in time is busy, and the agent sends
//!   its report again.

use deadpool_postgres::Object;
use tokio::sync::oneshot;

use super::{PgStore, error};
use crate::store::{Result, StoreError, Turn};

/// The advisory lock of the periodic chores ("hwchores" as an integer). A host's turn is the
/// lock keyed by its id: hosts are numbered from 1, far below the named locks' keys.
const CHORES_LOCK: i64 = 0x6877_6368_6f72_6573;

/// How long a report waits for its host's turn held by another collector: the turns'
/// connections' `lock_timeout`.
pub(super) const TURN_WAIT: &str = "30s";

/// A held advisory lock and the connection that holds it.
struct Held {
    client: Option<Object>,
    key: i64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (Some(client), Ok(runtime)) = (self.client.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let key = self.key;
        runtime.spawn(async move {
            if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&key]).await {
                // The connection is not given back: its session, and the lock, end with it.
                tracing::warn!(error = %e, "could not release a turn; closing its connection");
                let _ = Object::take(client);
            }
        });
    }
}

impl PgStore {
    /// Takes the host's turn, waiting up to `TURN_WAIT` (30 s) for another collector to give it up.
    pub async fn host_turn(&self, host_id: i64) -> Result<Option<Turn>> {
        let client = self.turn_client().await?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let taken = client.batch_execute(&format!("SELECT pg_advisory_lock({host_id})")).await;
            let sent = match taken {
                Ok(()) => tx.send(Ok(Held { client: Some(client), key: host_id })),
                Err(e) => tx.send(Err(error(e))),
            };
            // Nobody waits any more: a lock it got is released as the guard drops here.
            drop(sent);
        });
        let held = rx.await.map_err(|_| StoreError::Busy("a host's turn was not taken".to_owned()))??;
        Ok(Some(Box::new(held)))
    }

    /// Takes the chores' turn if no other collector holds it.
    pub async fn chores_turn(&self) -> Result<Option<Turn>> {
        let client = self.turn_client().await?;
        let row =
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&CHORES_LOCK]).await.map_err(error)?;
        let taken: bool = row.try_get(0).map_err(error)?;
        Ok(taken.then(|| Box::new(Held { client: Some(client), key: CHORES_LOCK }) as Turn))
    }

    async fn turn_client(&self) -> Result<Object> {
        self.turns.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => error(e),
            other => StoreError::Busy(format!("no connection for a turn: {other}")),
        })
    }
}
