//! `TELEGRAM_UPDATES=polling`: long polling with `getUpdates`, for hosts Telegram cannot
//! reach. Each update is marked handled in the same transaction that acts on it, and
//! polling resumes after the newest handled one, so across restarts no update is
//! handled twice or lost.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::api::{BotApi, BotApiError};
use crate::domain::link::TelegramLink;

/// How long Telegram holds a `getUpdates` call open when there is nothing to say.
const LONG_POLL: Duration = Duration::from_secs(25);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub async fn run(api: BotApi, link: Arc<TelegramLink>, mut shutdown: watch::Receiver<bool>) {
    let mut offset = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            return;
        }
        if offset.is_none() {
            // Confirms to Telegram everything handled before a restart.
            match link.last_update_id().await {
                Ok(last) => offset = Some(last.map_or(0, |id| id + 1)),
                Err(e) => tracing::warn!(error = %e, "cannot read where polling stopped"),
            }
        }
        let mut body = json!({ "timeout": LONG_POLL.as_secs(), "allowed_updates": ["message"] });
        if let Some(offset) = offset.filter(|o| *o > 0) {
            body["offset"] = json!(offset);
        }
        let fetched = tokio::select! {
            fetched = api.call("getUpdates", &body, LONG_POLL + Duration::from_secs(10)) => fetched,
            _ = shutdown.changed() => return,
        };
        let failure = match fetched {
            Ok(Value::Array(updates)) => handle_all(&link, &updates, &mut offset).await.err(),
            Ok(_) => Some("getUpdates answered something other than a list".to_owned()),
            Err(BotApiError::Refused { status: 409, .. }) => Some(
                "a webhook is set for this bot: run `otpd telegram delete-webhook`, \
                 or use TELEGRAM_UPDATES=webhook"
                    .to_owned(),
            ),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => backoff = Duration::from_secs(1),
            Some(reason) => {
                tracing::warn!(%reason, retry_in_secs = backoff.as_secs(), "polling Telegram failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Handles updates in order; `offset` moves past each one handled, so a failure
/// fetches the rest again.
async fn handle_all(
    link: &TelegramLink,
    updates: &[Value],
    offset: &mut Option<i64>,
) -> Result<(), String> {
    for update in updates {
        let Some(update_id) = update.get("update_id").and_then(Value::as_i64) else {
            tracing::warn!("an update without update_id; skipped");
            continue;
        };
        super::handle(link, update_id, update)
            .await
            .map_err(|e| e.to_string())?;
        *offset = Some(update_id + 1);
    }
    Ok(())
}
