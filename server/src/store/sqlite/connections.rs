//! How the embedded store's connections run: one writer thread that commits together the writes
//! queued while it was busy (group commit), each in a savepoint of its own, and a few reading
//! connections on the blocking pool.
//!
//! Invariants:
//! - a write's outcome is told only once its batch has committed (or failed): an agent is never
//!   acknowledged for a report that is not on disk;
//! - a write that fails (or panics) leaves nothing: its savepoint is rolled back, and the other
//!   writes of its batch go on;
//! - the batch takes the write lock when it begins (`BEGIN IMMEDIATE`): a database locked by
//!   another process fails the batch at once with `Busy`, rather than each write in turn.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::STATEMENT_CACHE;
use crate::store::{Result, StoreError, StoreTimings};

/// Writes committed together at most. Bounded so that the first write of a long queue is not
/// held for all the others; a queue this long commits in several batches.
const MAX_BATCH: usize = 64;

/// Told a write's batch's outcome: delivers the write's own result.
type Finish = Box<dyn FnOnce(Result<()>) + Send>;
/// A write: given its transaction (or why there is none), says whether it succeeded.
type Job = Box<dyn FnOnce(Result<&Transaction<'_>>) -> (bool, Finish) + Send>;

/// The one writing connection, owned by its thread; clones of the store share it.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (set up and migrated). It stops when the last handle
    /// to the store is dropped, closing the connection.
    pub(super) fn start(conn: Connection) -> Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || write_batches(conn, &queue))
            .map_err(|e| StoreError::Database(format!("cannot start the store's writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in its own savepoint of the writer's next batch; its result once the batch has
    /// committed.
    pub(super) async fn write<T, F>(&self, timings: &StoreTimings, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (told, outcome) = tokio::sync::oneshot::channel::<Result<T>>();
        let timings = timings.clone();
        let asked = Instant::now();
        let job: Job = Box::new(move |tx| {
            let began = Instant::now();
            timings.wait.observe(began.duration_since(asked).as_secs_f64());
            let out = tx.and_then(f);
            let ok = out.is_ok();
            let finish: Finish = Box::new(move |committed: Result<()>| {
                timings.transaction.observe(began.elapsed().as_secs_f64());
                // A write that failed says why itself; one that succeeded stands or falls with
                // its batch.
                let _ = told.send(out.and_then(|v| committed.map(|()| v)));
            });
            (ok, finish)
        });
        self.jobs.send(job).map_err(|_| StoreError::Database("the store's writer has stopped".to_owned()))?;
        outcome.await.map_err(|_| {
            StoreError::Database("a store write failed unexpectedly; it was rolled back".to_owned())
        })?
    }
}

/// The writer thread: each batch is what queued up while the last one ran.
fn write_batches(mut conn: Connection, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e);
                for job in batch {
                    let (_, finish) = job(Err(e.clone()));
                    finish(Err(e.clone()));
                }
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(batch.len());
        let mut broken: Option<StoreError> = None;
        for job in batch {
            if let Some(e) = &broken {
                let (_, finish) = job(Err(e.clone()));
                finishes.push(finish);
                continue;
            }
            if let Err(e) = statement(&tx, "SAVEPOINT write") {
                let (_, finish) = job(Err(e));
                finishes.push(finish);
                continue;
            }
            let ran = catch_unwind(AssertUnwindSafe(|| job(Ok(&tx))));
            let kept = match ran {
                Ok((ok, finish)) => {
                    finishes.push(finish);
                    ok
                }
                Err(_) => {
                    tracing::error!("a store write panicked; its changes are rolled back");
                    false
                }
            };
            let end = if kept {
                statement(&tx, "RELEASE write")
            } else {
                statement(&tx, "ROLLBACK TO write").and_then(|()| statement(&tx, "RELEASE write"))
            };
            // A savepoint that cannot be ended leaves the transaction in doubt: none of it is kept.
            if let Err(e) = end {
                broken = Some(e);
            }
        }
        let committed = match broken {
            None => tx.commit().map_err(StoreError::from),
            Some(e) => {
                drop(tx);
                Err(e)
            }
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, writes = finishes.len(), "a batch of store writes failed; none of it was kept");
        }
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

/// What every connection of the store, writing or reading, is opened with: a 5 s wait for a lock
/// another process holds, room for every prepared statement the store uses, and the address
/// functions ([`super::addresses`]).
pub(super) fn tune(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    super::addresses::register(conn)?;
    super::listing::register(conn)?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    tune(&conn)?;
    conn.execute_batch("PRAGMA query_only = ON;")?;
    Ok(conn)
}

fn statement(tx: &Transaction<'_>, sql: &str) -> Result<()> {
    tx.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Reading connections, opened as needed up to `permits`, each `query_only`: WAL lets them read
/// the last committed state while the writer writes.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
    open: fn(&Path) -> Result<Connection>,
}

impl Readers {
    /// The store's own reading connections.
    pub(super) fn new(path: PathBuf, connections: usize) -> Readers {
        Self::with_opener(path, connections, open_reader)
    }

    /// Connections opened by `open`, such as analysts' read-only SQL ones.
    pub(super) fn with_opener(
        path: PathBuf,
        connections: usize,
        open: fn(&Path) -> Result<Connection>,
    ) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(connections),
            open,
        }
    }

    /// Runs `f` in one read transaction on an idle reading connection. It sees everything
    /// committed before it began, and can change nothing.
    pub(super) async fn read<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.with_connection(move |conn| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            // Ending a read transaction cannot lose anything; it lets the WAL be checkpointed.
            tx.finish()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on an idle connection, on the blocking pool.
    pub(super) async fn with_connection<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Database("the store is closed".to_owned()))?;
        let pool = self.clone();
        let out = tokio::task::spawn_blocking(move || {
            let idle =
                pool.idle.lock().map_err(|_| StoreError::Database("reader pool poisoned".to_owned()))?.pop();
            let mut conn = match idle {
                Some(c) => c,
                None => (pool.open)(&pool.path)?,
            };
            let out = f(&mut conn);
            // A connection left in a transaction (a failed read) is not put back.
            if conn.is_autocommit()
                && let Ok(mut idle) = pool.idle.lock()
            {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")));
        drop(permit);
        out?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT NOT NULL)").unwrap();
        Writer::start(conn).unwrap()
    }

    async fn rows(w: &Writer, timings: &StoreTimings) -> Vec<String> {
        w.write(timings, |tx| {
            let mut stmt = tx.prepare("SELECT v FROM t ORDER BY rowid")?;
            Ok(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
        })
        .await
        .unwrap()
    }

    /// Writes queued behind a busy writer commit together; one that fails or panics there leaves
    /// nothing and takes nothing of the others with it.
    #[tokio::test]
    async fn a_batch_keeps_each_write_whole_and_alone() {
        let w = std::sync::Arc::new(writer());
        let timings = StoreTimings::default();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let (w, timings) = (w.clone(), timings.clone());
            async move {
                w.write(&timings, move |tx| {
                    tx.execute("INSERT INTO t VALUES ('first')", [])?;
                    let _ = held_tx.send(());
                    let _ = release_rx.recv();
                    Ok(())
                })
                .await
            }
        });
        held_rx.await.unwrap();
        let spawn = |what: &'static str| {
            let (w, timings) = (w.clone(), timings.clone());
            tokio::spawn(async move {
                w.write(&timings, move |tx| {
                    tx.execute("INSERT INTO t VALUES (?1)", [what])?;
                    match what {
                        "fails" => Err(StoreError::Corrupt("refused on purpose".to_owned())),
                        "panics" => panic!("on purpose"),
                        _ => Ok(what.len()),
                    }
                })
                .await
            })
        };
        let (kept, fails, panics, also) =
            (spawn("kept"), spawn("fails"), spawn("panics"), spawn("also kept"));
        // Each spawned task runs to its first wait (its write queued) before this one goes on.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert_eq!(kept.await.unwrap().unwrap(), 4);
        assert!(matches!(fails.await.unwrap(), Err(StoreError::Corrupt(_))));
        let panicked = panics.await.unwrap().unwrap_err();
        assert!(panicked.to_string().contains("rolled back"), "{panicked}");
        assert_eq!(also.await.unwrap().unwrap(), 9);
        assert_eq!(rows(&w, &timings).await, ["first", "kept", "also kept"]);
    }

    /// A database another process holds fails the whole batch at once, with `Busy`, and keeps
    /// nothing of it; the writer goes on once the lock is gone.
    #[tokio::test]
    async fn a_locked_database_fails_a_batch_as_busy() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT NOT NULL)").unwrap();
        conn.busy_timeout(std::time::Duration::from_millis(50)).unwrap();
        let w = Writer::start(conn).unwrap();
        let timings = StoreTimings::default();
        let mut other = Connection::open(&path).unwrap();
        let held = other.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        let err =
            w.write(&timings, |tx| Ok(tx.execute("INSERT INTO t VALUES ('x')", [])?)).await.unwrap_err();
        assert!(matches!(err, StoreError::Busy(_)), "{err}");
        drop(held);
        w.write(&timings, |tx| Ok(tx.execute("INSERT INTO t VALUES ('y')", [])?)).await.unwrap();
        assert_eq!(rows(&w, &timings).await, ["y"]);
    }
}
