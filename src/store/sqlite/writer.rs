//! Group commit: one thread owns the connection and runs every operation. It takes all
//! the operations waiting at that moment, runs them in one transaction, commits once,
//! and only then answers them. A `200` is therefore sent only for work that is on disk,
//! while one fsync is shared by many requests.
//!
//! A failed operation must be rolled back alone. Operations run optimistically, without
//! a savepoint each (journaling every page an operation touches took a sixth of the
//! writer's time); when one fails, the whole transaction is rolled back and the batch
//! runs again with a savepoint per operation, so that only the failed one is undone.
//! Operations are therefore `Fn`: they may run twice, and only the last run counts.
//!
//! In WAL mode the commit itself does not wait for the disk: a second thread syncs the
//! log and only then answers the batch, while the writer already runs the next one. An
//! answer therefore still follows the sync of everything it saw, and answers go out in
//! commit order (each sync covers every batch committed before it). Profiled, the writer
//! sat idle during the sync more than half the time before.

use std::fs::File;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::map_err;
use crate::store::StoreError;

/// Operations taken into one transaction at most; bounds a transaction's size and the
/// latency of its first request.
const MAX_BATCH: usize = 512;

/// Whether each operation runs in a savepoint of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Optimistic,
    SavepointEach,
}

trait Op: Send {
    /// Runs the work (again, on a second pass); false when it failed having perhaps
    /// written something, which only a savepoint or a rollback can undo.
    fn run(&mut self, conn: &Connection, isolation: Isolation) -> bool;
    /// A read is answered once its batch ran without failing, before the commit.
    fn answer_read(&mut self);
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Pending<T, F> {
    work: F,
    /// A read is answered without waiting for the commit and the sync: it wrote nothing
    /// that could be lost. (What it read may be lost in a crash if the batch it rode in
    /// never reaches the disk; no read answer promises otherwise.)
    read_only: bool,
    result: Option<Result<T, StoreError>>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Op for Pending<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, isolation: Isolation) -> bool {
        let result = if isolation == Isolation::SavepointEach && !self.read_only {
            in_savepoint(conn, &self.work)
        } else {
            (self.work)(conn)
        };
        let wrote_nothing_wrong = result.is_ok() || self.read_only;
        self.result = Some(result);
        wrote_nothing_wrong
    }

    fn answer_read(&mut self) {
        if self.read_only
            && let (Some(result), Some(reply)) = (self.result.take(), self.reply.take())
        {
            let _ = reply.send(result);
        }
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let Some(reply) = self.reply else {
            return;
        };
        let result = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Internal("operation did not run".into()))),
            Err(e) => Err(e),
        };
        // The caller may have gone away (client disconnected); the work is done anyway.
        let _ = reply.send(result);
    }
}

/// A failed operation is rolled back alone; the others in the batch still commit.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl Fn(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run_cached(conn, "SAVEPOINT op")?;
    match work(conn) {
        Ok(v) => {
            run_cached(conn, "RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
                .map_err(map_err)?;
            Err(e)
        }
    }
}

/// Runs a statement kept prepared: these run for every batch, and parsing them each
/// time showed in the profile.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(map_err)
}

enum Message {
    Op(Box<dyn Op>),
    Stop,
}

/// Who makes a commit durable before it is answered.
pub(super) enum Durability {
    /// SQLite syncs inside every commit (`synchronous = FULL`).
    SqliteSyncs,
    /// The commit only writes the WAL (`synchronous = NORMAL`); this file is that WAL,
    /// synced by the answering thread.
    SyncLog(File),
}

type Batch = Vec<Box<dyn Op>>;

pub(super) struct Writer {
    tx: mpsc::Sender<Message>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(super) fn start(conn: Connection, durability: Durability) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let answers = match durability {
            Durability::SqliteSyncs => Answers::Now,
            Durability::SyncLog(wal) => {
                let (to_syncer, batches) = mpsc::channel();
                let syncer = std::thread::Builder::new()
                    .name("otpd-sqlite-sync".into())
                    .spawn(move || sync_and_answer(&wal, batches))?;
                Answers::AfterSync(to_syncer, syncer)
            }
        };
        let thread = std::thread::Builder::new()
            .name("otpd-sqlite-writer".into())
            .spawn(move || run(conn, rx, answers))?;
        Ok(Writer {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Runs `work` in the next transaction and answers once it is committed.
    pub(super) async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(work, false).await
    }

    /// Runs `work`, which only reads, in the next batch and answers as soon as it ran.
    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(work, true).await
    }

    async fn submit<T, F>(&self, work: F, read_only: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Pending {
            work,
            read_only,
            result: None,
            reply: Some(reply),
        };
        self.tx
            .send(Message::Op(Box::new(op)))
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    /// Answers everything already accepted, then stops the thread.
    pub(super) async fn stop(&self) {
        let _ = self.tx.send(Message::Stop);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Where a committed batch goes to be answered.
enum Answers {
    Now,
    AfterSync(mpsc::Sender<Batch>, JoinHandle<()>),
}

impl Answers {
    fn send(&self, batch: Batch, commit: Result<(), StoreError>) {
        match (self, commit) {
            (Answers::AfterSync(syncer, _), Ok(())) => {
                if let Err(mpsc::SendError(batch)) = syncer.send(batch) {
                    answer_all(
                        batch,
                        &Err(StoreError::Internal("the log syncer stopped".into())),
                    );
                }
            }
            (_, commit) => answer_all(batch, &commit),
        }
    }

    /// Waits until every batch handed over is answered.
    fn finish(self) {
        if let Answers::AfterSync(syncer, thread) = self {
            drop(syncer);
            let _ = thread.join();
        }
    }
}

fn answer_all(batch: Batch, commit: &Result<(), StoreError>) {
    for op in batch {
        op.answer(commit.clone());
    }
}

/// Syncs the WAL once for every batch committed since the last sync, then answers them.
fn sync_and_answer(wal: &File, batches: mpsc::Receiver<Batch>) {
    while let Ok(first) = batches.recv() {
        let mut synced = vec![first];
        synced.extend(batches.try_iter());
        let outcome = wal.sync_data().map_err(|e| {
            tracing::error!(error = %e, "cannot sync the store's log; its writes are refused");
            StoreError::Unavailable("the store cannot write to disk".into())
        });
        for batch in synced {
            answer_all(batch, &outcome);
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Message>, answers: Answers) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Op(op) => batch.push(op),
                Message::Stop => stopping = true,
            }
            if batch.len() < MAX_BATCH && !stopping {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let commit = commit_batch(&conn, &mut batch);
            answers.send(batch, commit);
        }
    }
    answers.finish();
}

fn commit_batch(conn: &Connection, batch: &mut [Box<dyn Op>]) -> Result<(), StoreError> {
    let outcome = run_batch(conn, batch);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "store transaction failed; every operation in it is refused");
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    outcome
}

/// Runs the batch in one transaction and commits it. An error means nothing of the batch
/// is stored, so every operation in it must be answered with that error.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Op>]) -> Result<(), StoreError> {
    if !run_all(conn, batch, Isolation::Optimistic)? {
        // Something failed half-way: undo everything, and undo only it on a second pass.
        run_cached(conn, "ROLLBACK")?;
        run_all(conn, batch, Isolation::SavepointEach)?;
    }
    for op in batch.iter_mut() {
        op.answer_read();
    }
    run_cached(conn, "COMMIT")
}

/// Runs every operation in a new transaction, left open; false when an operation failed
/// (optimistically, the pass stops there).
fn run_all(
    conn: &Connection,
    batch: &mut [Box<dyn Op>],
    isolation: Isolation,
) -> Result<bool, StoreError> {
    run_cached(conn, "BEGIN IMMEDIATE")?;
    for op in batch.iter_mut() {
        // A panic leaves the savepoint open, and some errors (disk full, I/O) make
        // SQLite roll the whole transaction back; either way, nothing after this point
        // may run, or it would commit on its own outside the batch.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn, isolation)))
            .map_err(|_| StoreError::Internal("a store operation panicked".into()))?;
        if conn.is_autocommit() {
            return Err(StoreError::Unavailable(
                "the store rolled the transaction back".into(),
            ));
        }
        if !ok && isolation == Isolation::Optimistic {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        (dir, conn)
    }

    fn count(conn: &Connection) -> Result<i64, StoreError> {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .map_err(map_err)
    }

    type Reply<T> = oneshot::Receiver<Result<T, StoreError>>;

    fn pending<T, F>(work: F, read_only: bool) -> (Box<dyn Op>, Reply<T>)
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            work,
            read_only,
            result: None,
            reply: Some(reply),
        };
        (Box::new(pending), answer)
    }

    fn op<T, F>(work: F) -> (Box<dyn Op>, Reply<T>)
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        pending(work, false)
    }

    fn insert(v: i64) -> impl Fn(&Connection) -> Result<usize, StoreError> + Send + 'static {
        move |c: &Connection| c.execute("INSERT INTO t VALUES (?1)", [v]).map_err(map_err)
    }

    #[test]
    fn a_failed_operation_is_rolled_back_alone() {
        let (_dir, conn) = database();
        let (failing, mut failing_answer) = op(|c| {
            insert(1)(c)?;
            Err::<(), _>(StoreError::Internal("refused".into()))
        });
        let (fine, mut fine_answer) = op(insert(2));
        let mut batch = vec![failing, fine];
        let commit = commit_batch(&conn, &mut batch);
        answer_all(batch, &commit);
        assert!(failing_answer.try_recv().unwrap().is_err());
        assert_eq!(fine_answer.try_recv().unwrap().unwrap(), 1);
        assert_eq!(count(&conn).unwrap(), 1);
    }

    #[test]
    fn after_a_failure_the_batch_runs_again_and_reads_see_only_what_commits() {
        let (_dir, conn) = database();
        let (first, mut first_answer) = op(insert(1));
        let (failing, mut failing_answer) = op(|c| {
            insert(100)(c)?;
            Err::<(), _>(StoreError::Internal("refused".into()))
        });
        let (read, mut read_answer) = pending(count, true);
        let (last, mut last_answer) = op(insert(2));
        let mut batch = vec![first, failing, read, last];
        let commit = commit_batch(&conn, &mut batch);
        // The read is answered before the commit, as the batch ran.
        assert_eq!(read_answer.try_recv().unwrap().unwrap(), 1);
        answer_all(batch, &commit);
        assert_eq!(first_answer.try_recv().unwrap().unwrap(), 1);
        assert!(failing_answer.try_recv().unwrap().is_err());
        assert_eq!(last_answer.try_recv().unwrap().unwrap(), 1);
        let stored: Vec<i64> = conn
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stored,
            [1, 2],
            "each operation once, the failed one not at all"
        );
    }

    #[test]
    fn when_sqlite_drops_the_transaction_nothing_in_the_batch_is_stored() {
        let (_dir, conn) = database();
        let (before, mut before_answer) = op(insert(1));
        // What a disk-full or I/O error does: the whole transaction is rolled back.
        let (dropped, mut dropped_answer) = op(|c| c.execute_batch("ROLLBACK").map_err(map_err));
        let (after, mut after_answer) = op(insert(2));
        let mut batch = vec![before, dropped, after];
        let commit = commit_batch(&conn, &mut batch);
        answer_all(batch, &commit);
        assert!(before_answer.try_recv().unwrap().is_err());
        assert!(dropped_answer.try_recv().unwrap().is_err());
        assert!(after_answer.try_recv().unwrap().is_err());
        assert_eq!(
            count(&conn).unwrap(),
            0,
            "an answered error must not be stored"
        );
    }

    #[test]
    fn a_panicking_operation_fails_its_batch_and_nothing_is_stored() {
        let (_dir, conn) = database();
        let (before, mut before_answer) = op(insert(1));
        let (panicking, mut panicking_answer) = op(|_| -> Result<(), StoreError> { panic!("bug") });
        let mut batch = vec![before, panicking];
        let commit = commit_batch(&conn, &mut batch);
        answer_all(batch, &commit);
        assert!(before_answer.try_recv().unwrap().is_err());
        assert!(matches!(
            panicking_answer.try_recv().unwrap(),
            Err(StoreError::Internal(_))
        ));
        assert_eq!(count(&conn).unwrap(), 0);
    }

    #[tokio::test]
    async fn the_writer_thread_survives_a_panicking_operation() {
        let (_dir, conn) = database();
        let w = Writer::start(conn, Durability::SqliteSyncs).unwrap();
        let r: Result<(), StoreError> = w.call(|_| panic!("bug")).await;
        assert!(matches!(r, Err(StoreError::Internal(_))));
        assert_eq!(w.call(insert(1)).await.unwrap(), 1);
        assert_eq!(w.call(count).await.unwrap(), 1);
        w.stop().await;
    }

    #[tokio::test]
    async fn with_the_log_synced_apart_every_operation_is_answered_in_order_and_stored() {
        let (dir, conn) = database();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
            .unwrap();
        // As SqliteStore::open does: SQLite makes the file at its first write otherwise.
        let wal = File::create(dir.path().join("w.db-wal")).unwrap();
        let w = std::sync::Arc::new(Writer::start(conn, Durability::SyncLog(wal)).unwrap());
        let calls: Vec<_> = (0..200)
            .map(|v| {
                let w = w.clone();
                tokio::spawn(async move { w.call(insert(v)).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 1);
        }
        let failed: Result<(), StoreError> = w
            .call(|_| Err(StoreError::Internal("refused".into())))
            .await;
        assert!(failed.is_err());
        assert_eq!(w.call(count).await.unwrap(), 200);
        w.stop().await;
    }
}
