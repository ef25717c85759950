//! Group commit: one thread owns the connection and runs every operation. It takes all
//! the operations waiting at that moment, runs each in its own savepoint inside one
//! transaction, commits once, and only then answers them. A `200` is therefore sent only
//! for work that is on disk, while one fsync is shared by many requests.

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

/// A failed operation is rolled back alone; the others in the batch still commit.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT op").map_err(map_err)?;
    match work(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE op").map_err(map_err)?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
                .map_err(map_err)?;
            Err(e)
        }
    }
}

enum Message {
    Op(Box<dyn Op>),
    Stop,
}

pub(super) struct Writer {
    tx: mpsc::Sender<Message>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("otpd-sqlite-writer".into())
            .spawn(move || run(conn, rx))?;
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

fn run(conn: Connection, rx: mpsc::Receiver<Message>) {
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
            commit_batch(&conn, batch);
        }
    }
}

fn commit_batch(conn: &Connection, mut batch: Vec<Box<dyn Op>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = map_err(e);
        tracing::error!(error = %err, "cannot begin a store transaction");
        for op in batch {
            op.answer(Err(err.clone()));
        }
        return;
    }
    for op in batch.iter_mut() {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn)));
        // A panic leaves the savepoint open, and some errors (disk full, I/O) make
        // SQLite roll the whole transaction back; either way, nothing after this point
        // may run, or it would commit on its own outside the batch.
        let abort = match ran {
            Err(_) => Some(StoreError::Internal("a store operation panicked".into())),
            Ok(()) if conn.is_autocommit() => Some(StoreError::Unavailable(
                "the store rolled the transaction back".into(),
            )),
            Ok(()) => None,
        };
        if let Some(err) = abort {
            tracing::error!(error = %err, "store transaction aborted");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for op in batch {
                op.answer(Err(err.clone()));
            }
            return;
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(map_err);
    if let Err(e) = &commit {
        tracing::error!(error = %e, "cannot commit a store transaction");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for op in batch {
        op.answer(commit.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        (dir, Writer::start(conn).unwrap())
    }

    fn count(conn: &Connection) -> Result<i64, StoreError> {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .map_err(map_err)
    }

    #[tokio::test]
    async fn a_failed_operation_is_rolled_back_alone() {
        let (_dir, w) = writer();
        let failing = w.call(|c| {
            c.execute("INSERT INTO t VALUES (1)", []).map_err(map_err)?;
            Err::<(), _>(StoreError::Internal("refused".into()))
        });
        let fine = w.call(|c| c.execute("INSERT INTO t VALUES (2)", []).map_err(map_err));
        let (failing, fine) = tokio::join!(failing, fine);
        assert!(failing.is_err());
        assert_eq!(fine.unwrap(), 1);
        assert_eq!(w.call(count).await.unwrap(), 1);
        w.stop().await;
    }

    #[tokio::test]
    async fn when_sqlite_drops_the_transaction_nothing_else_in_the_batch_runs() {
        let (_dir, w) = writer();
        // What a disk-full or I/O error does: the whole transaction is rolled back.
        let dropped = w.call(|c| {
            c.execute_batch("ROLLBACK").map_err(map_err)?;
            Ok(())
        });
        let after = w.call(|c| c.execute("INSERT INTO t VALUES (1)", []).map_err(map_err));
        let (dropped, after) = tokio::join!(dropped, after);
        // Either both were in one batch and both fail, or `after` ran in its own.
        assert!(dropped.is_err());
        let stored = w.call(count).await.unwrap();
        assert_eq!(
            stored,
            i64::from(after.is_ok()),
            "an answered error must not be stored"
        );
        w.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_without_killing_the_writer() {
        let (_dir, w) = writer();
        let r: Result<(), StoreError> = w.call(|_| panic!("bug")).await;
        assert!(matches!(r, Err(StoreError::Internal(_))));
        assert_eq!(w.call(count).await.unwrap(), 0);
        w.stop().await;
    }
}
