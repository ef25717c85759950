//! What both stores keep of a delivery job, in the same encoding: the message payload
//! (erased when the job ends), the per-provider history, and what an attempt's end
//! writes.

use serde::{Deserialize, Serialize};

use super::{HistoryEntry, NewCode, StoreError};
use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, AttemptResult, DeliveryState, ProviderTry};
use crate::domain::code::Password;
use crate::domain::message::MessageContent;

/// A long-lived code retried for hours would grow its history without end; the first
/// entries and the latest are what an operator reads.
pub const MAX_HISTORY: usize = 50;
pub const KEEP_FIRST: usize = 10;

/// The message of a job, with its code (to scrub provider errors), until the job ends.
#[derive(Serialize, Deserialize)]
pub struct Payload {
    #[serde(flatten)]
    pub content: MessageContent,
    /// Absent in jobs queued by versions before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Payload {
    pub fn encode(code: &NewCode) -> Result<String, StoreError> {
        serde_json::to_string(&Payload {
            content: code.content.clone(),
            code: Some(code.code.reveal().to_owned()),
        })
        .map_err(|e| StoreError::Internal(format!("cannot encode a message: {e}")))
    }

    /// The message and its code; `id` names the job in the error.
    pub fn decode(
        raw: Option<&str>,
        id: &str,
    ) -> Result<(MessageContent, Option<Password>), StoreError> {
        let payload: Payload = serde_json::from_str(raw.unwrap_or_default()).map_err(|e| {
            StoreError::Internal(format!("delivery {id} has an unreadable message: {e}"))
        })?;
        let code = payload.code.and_then(|c| Password::parse(&c).ok());
        Ok((payload.content, code))
    }
}

/// One history entry as stored.
#[derive(Serialize, Deserialize)]
pub struct StoredTry {
    pub attempt: u32,
    pub at: i64,
    #[serde(flatten)]
    pub tried: ProviderTry,
}

impl StoredTry {
    /// The report's provider answers, one stored entry each.
    pub fn from_report(report: &AttemptReport, now: Timestamp) -> Vec<StoredTry> {
        report
            .tries
            .iter()
            .map(|tried| StoredTry {
                attempt: report.attempt,
                at: now.millis(),
                tried: tried.clone(),
            })
            .collect()
    }

    pub fn into_entry(self) -> HistoryEntry {
        HistoryEntry {
            attempt: self.attempt,
            at: Timestamp::from_millis(self.at).to_rfc3339(),
            tried: self.tried,
        }
    }
}

/// Keeps the first `KEEP_FIRST` and the latest entries, `MAX_HISTORY` in all.
pub fn cap_history<T>(entries: &mut Vec<T>) {
    if entries.len() > MAX_HISTORY {
        entries.drain(KEEP_FIRST..entries.len() - (MAX_HISTORY - KEEP_FIRST));
    }
}

/// What the end of an attempt writes on the job.
pub struct AttemptEnd<'a> {
    pub state: DeliveryState,
    /// The provider to show (the one that sent it, or refused it for good).
    pub provider: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub error: Option<&'a str>,
    /// When a retry is due.
    pub next_attempt_at: Option<Timestamp>,
}

impl<'a> AttemptEnd<'a> {
    pub fn of(report: &'a AttemptReport) -> Self {
        match &report.result {
            AttemptResult::Sent {
                provider,
                message_id,
            } => AttemptEnd {
                state: DeliveryState::Sent,
                provider: Some(provider),
                message_id: message_id.as_deref(),
                error: None,
                next_attempt_at: None,
            },
            AttemptResult::Retry { at, error } => AttemptEnd {
                state: DeliveryState::Queued,
                provider: None,
                message_id: None,
                error: Some(error),
                next_attempt_at: Some(*at),
            },
            AttemptResult::Failed { error } => AttemptEnd {
                state: DeliveryState::Failed,
                provider: report.tries.last().map(|t| t.provider.as_str()),
                message_id: None,
                error: Some(error),
                next_attempt_at: None,
            },
            AttemptResult::Expired { error } => AttemptEnd {
                state: DeliveryState::Expired,
                provider: None,
                message_id: None,
                error: Some(error),
                next_attempt_at: None,
            },
        }
    }
}
