//! `TELEGRAM_UPDATES=polling`: long polling with `getUpdates`, for hosts Telegram cannot
//! reach. Each update is marked handled in the same transaction that acts on it, so an
//! update fetched again (Telegram keeps unconfirmed ones) is never handled twice.
//!
//! A new process starts without an offset: Telegram then returns every update not yet
//! confirmed, and the handled-updates record skips those done before the restart. No
//! offset is ever taken from the store, where a forged webhook call could have left an
//! update id far ahead of Telegram's (which would make Telegram drop real updates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::delivery::{BotApi, BotApiError};
use crate::domain::link::TelegramLink;
use crate::store::StoreError;

/// How long Telegram holds a `getUpdates` call open when there is nothing to say.
const LONG_POLL: Duration = Duration::from_secs(25);
/// Updates per call: bounded, so one batch of long messages stays a small answer.
const BATCH: u32 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An update whose handling fails this many times for a reason other than the store
/// being unreachable is skipped, so that it cannot hold up every update after it.
const ATTEMPTS_PER_UPDATE: u32 = 3;

pub async fn run(api: BotApi, link: Arc<TelegramLink>, mut shutdown: watch::Receiver<bool>) {
    let mut offset: Option<i64> = None;
    let mut failing: Option<(i64, u32)> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            return;
        }
        let mut body = json!({
            "timeout": LONG_POLL.as_secs(),
            "limit": BATCH,
            "allowed_updates": ["message"],
        });
        if let Some(offset) = offset {
            body["offset"] = json!(offset);
        }
        let started = Instant::now();
        let fetched = tokio::select! {
            fetched = api.call("getUpdates", &body, LONG_POLL + Duration::from_secs(10)) => fetched,
            _ = shutdown.changed() => return,
        };
        let failure = match fetched {
            Ok(Value::Array(updates)) => {
                let handled = handle_all(&link, &updates, &mut offset, &mut failing).await;
                match handled {
                    Err(e) => Some(e),
                    // A long poll that answers "nothing" at once (a proxy that ignores
                    // `timeout`) must not turn this loop into a busy one.
                    Ok(()) if updates.is_empty() && started.elapsed() < Duration::from_secs(1) => {
                        pause(Duration::from_secs(1), &mut shutdown).await;
                        None
                    }
                    Ok(()) => None,
                }
            }
            Ok(_) => Some("getUpdates answered something other than a list".to_owned()),
            Err(BotApiError::Refused {
                status: 409,
                description,
                ..
            }) => Some(format!(
                "Telegram refused getUpdates ({description}): either a webhook is set for this \
                 bot (run `otpd telegram delete-webhook`, or use TELEGRAM_UPDATES=webhook) or \
                 another process polls with the same token"
            )),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => backoff = Duration::from_secs(1),
            Some(reason) => {
                tracing::warn!(%reason, retry_in_secs = backoff.as_secs(), "polling Telegram failed");
                if !pause(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Waits `d`; false when shutdown came first.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

/// Handles updates in order; `offset` moves past each one done, so after a failure the
/// rest is fetched again.
async fn handle_all(
    link: &TelegramLink,
    updates: &[Value],
    offset: &mut Option<i64>,
    failing: &mut Option<(i64, u32)>,
) -> Result<(), String> {
    for update in updates {
        let Some(update_id) = update.get("update_id").and_then(Value::as_i64) else {
            tracing::warn!("an update without update_id; skipped");
            continue;
        };
        match super::handle(link, update_id, update).await {
            Ok(()) => *failing = None,
            Err(e @ StoreError::Unavailable(_)) => return Err(e.to_string()),
            Err(e) => {
                let tries = match *failing {
                    Some((id, n)) if id == update_id => n + 1,
                    _ => 1,
                };
                if tries < ATTEMPTS_PER_UPDATE {
                    *failing = Some((update_id, tries));
                    return Err(e.to_string());
                }
                tracing::error!(update_id, error = %e, "an update keeps failing; skipping it");
                *failing = None;
                if let Err(e) = link.skip_update(update_id).await {
                    tracing::warn!(update_id, error = %e, "cannot record the skipped update");
                }
            }
        }
        *offset = update_id.checked_add(1);
    }
    Ok(())
}
