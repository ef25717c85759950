//! Group commit: one thread owns the connection and runs every operation. It takes all
//! the operations waiting at that moment, runs each in its own savepoint inside one
//! transaction, commits once, and only then answers them. A `200` is therefore sent only
//! for work that is on disk, while one fsync is shared by many requests.
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

trait Op: Send {
    fn run(&mut self, conn: &Connection);
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Pending<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(in_savepoint(conn, work));
        }
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let result = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Internal("operation did not run".into()))),
            Err(e) => Err(e),
        };
        // The caller may have gone away (client disconnected); the work is done anyway.
        let _ = self.reply.send(result);
    }
}

/// A read is answered as soon as it has run, without waiting for the commit and the
/// sync: it wrote nothing that could be lost. (What it read may be lost in a crash if
/// the batch it rode in never reaches the disk; no read answer promises otherwise.)
struct Read<T, F> {
    work: Option<F>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Op for Read<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let (Some(work), Some(reply)) = (self.work.take(), self.reply.take()) {
            let _ = reply.send(work(conn));
        }
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        // Answered when it ran, unless the batch failed before reaching it.
        if let Some(reply) = self.reply {
            let _ = reply.send(commit.and(Err(StoreError::Unavailable(
                "the store transaction failed".into(),
            ))));
        }
    }
}

/// A failed operation is rolled back alone; the others in the batch still commit.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
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

/// Runs a statement kept prepared: these run for every operation, and parsing them each
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
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Pending {
            work: Some(work),
            result: None,
            reply,
        };
        self.submit(Box::new(op), answer).await
    }

    /// Runs `work`, which only reads, in the next batch and answers as soon as it ran.
    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Read {
            work: Some(work),
            reply: Some(reply),
        };
        self.submit(Box::new(op), answer).await
    }

    async fn submit<T>(
        &self,
        op: Box<dyn Op>,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.tx
            .send(Message::Op(op))
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
    run_cached(conn, "BEGIN IMMEDIATE")?;
    for op in batch.iter_mut() {
        // A panic leaves the savepoint open, and some errors (disk full, I/O) make
        // SQLite roll the whole transaction back; either way, nothing after this point
        // may run, or it would commit on its own outside the batch.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn)))
            .map_err(|_| StoreError::Internal("a store operation panicked".into()))?;
        if conn.is_autocommit() {
            return Err(StoreError::Unavailable(
                "the store rolled the transaction back".into(),
            ));
        }
    }
    run_cached(conn, "COMMIT")
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

    fn op<T, F>(work: F) -> (Box<dyn Op>, Reply<T>)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            work: Some(work),
            result: None,
            reply,
        };
        (Box::new(pending), answer)
    }

    fn insert(v: i64) -> impl FnOnce(&Connection) -> Result<usize, StoreError> + Send + 'static {
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
