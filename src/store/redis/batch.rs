//! Calls of one script made by many requests at once go to Redis as one script call.
//! Each call costs Redis a fixed price beyond the script's own work (reading and
//! parsing the request, setting the script up, writing the reply and the append-only
//! file): for a create, about as much as the work itself (BENCHMARKS.md, finding 27).
//! A batch pays it once. Calls that arrive while batches are in flight wait for the
//! next one; nothing waits on a timer, so a lone call goes at once.
//!
//! The script runs each call of a batch in turn (lib.lua's `each`), as Redis would run
//! them one by one: a batch is one atomic step, and no call sees a half-done other.

use std::sync::Arc;

use redis::{Script, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::conn::{CALL_TIMEOUT, Conn, no_answer};
use crate::store::StoreError;

/// The most calls one script call carries; a batch of 64 creates keeps Redis busy for
/// about two milliseconds, which is as long as any other client should wait on it.
const MOST_PER_BATCH: usize = 64;
/// Batches in flight at once: while Redis runs one, the next is on its way, so that
/// Redis does not idle while otpd hands out answers.
const IN_FLIGHT: usize = 2;

/// One call: its keys and arguments, as the script takes them for one call.
struct Call {
    keys: Vec<String>,
    args: Vec<String>,
    answer: oneshot::Sender<Result<Value, StoreError>>,
}

/// The calls of one script, batched.
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Call>,
}

impl Batcher {
    /// Starts the task that sends the batches (on the current Tokio runtime); it ends
    /// when the batcher is dropped.
    pub fn start(conn: Conn, script: Script) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(conn, script, waiting));
        Batcher { queue }
    }

    /// Runs the script for one call, with the calls that arrive meanwhile; the script's
    /// answer for this call.
    pub async fn call(&self, keys: Vec<String>, args: Vec<String>) -> Result<Value, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Call { keys, args, answer })
            .map_err(|_| StoreError::Internal("the Redis batcher has stopped".into()))?;
        // Bounded as every other call: batches ahead of this one may be waiting on a
        // Redis that is gone.
        match tokio::time::timeout(CALL_TIMEOUT, answered).await {
            Err(_) => Err(no_answer()),
            Ok(Err(_)) => Err(StoreError::Internal(
                "the Redis batcher dropped a call".into(),
            )),
            Ok(Ok(answer)) => answer.and_then(|answer| match failure(&answer) {
                Some(error) => Err(StoreError::Internal(format!("a script failed: {error}"))),
                None => Ok(answer),
            }),
        }
    }
}

async fn send_batches(conn: Conn, script: Script, mut waiting: mpsc::UnboundedReceiver<Call>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // The semaphore is never closed: acquiring fails only if it were.
    while let Ok(permit) = in_flight.clone().acquire_owned().await {
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MOST_PER_BATCH {
            match waiting.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let (conn, script) = (conn.clone(), script.clone());
        tokio::spawn(async move {
            send(&conn, &script, batch).await;
            drop(permit);
        });
    }
}

async fn send(conn: &Conn, script: &Script, batch: Vec<Call>) {
    let mut invocation = script.prepare_invoke();
    for call in &batch {
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg);
        }
    }
    let answers = conn
        .invoke::<Vec<Value>>(&mut invocation)
        .await
        .and_then(|answers| {
            if answers.len() == batch.len() {
                Ok(answers)
            } else {
                Err(StoreError::Internal(format!(
                    "a batch of {} calls got {} answers",
                    batch.len(),
                    answers.len()
                )))
            }
        });
    match answers {
        Ok(answers) => {
            for (call, answer) in batch.into_iter().zip(answers) {
                // The caller may have gone (its request was cancelled): nothing to do.
                let _ = call.answer.send(Ok(answer));
            }
        }
        Err(e) => {
            for call in batch {
                let _ = call.answer.send(Err(e.clone()));
            }
        }
    }
}

/// The error of a call that failed in the script (lib.lua's `each` answers it
/// `{'failed', error}`).
fn failure(answer: &Value) -> Option<String> {
    match answer {
        Value::Array(fields) if fields.len() == 2 => match (&fields[0], &fields[1]) {
            (Value::BulkString(tag), Value::BulkString(error)) if tag == b"failed" => {
                Some(String::from_utf8_lossy(error).into_owned())
            }
            _ => None,
        },
        _ => None,
    }
}
