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
        op.run(conn);
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
