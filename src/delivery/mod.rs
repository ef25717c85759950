//! Sending codes: the outbox jobs, the `Provider` seam, and the worker that drains them.

mod chains;
mod console;
mod dispatch;
pub(crate) mod http;
mod perfumer;
mod smtp;
mod telegram;
mod twilio;
mod webhook;
mod worker;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub use chains::build as build_chains;
pub use console::{ConsoleOut, ConsoleProvider};
pub use dispatch::{Dispatch, Reservation};
pub use perfumer::PerfumerProvider;
pub use smtp::SmtpProvider;
pub use telegram::{BotApi, BotApiError, TelegramProvider};
pub use twilio::TwilioProvider;
pub use webhook::WebhookProvider;
pub use worker::{DeliverySettings, Worker, count_ended_by_store};

use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::domain::code::Password;
use crate::domain::message::MessageContent;

/// 48 bits of creation time in milliseconds, then 80 random bits, hex. The random part
/// keeps it unguessable (`GET /deliveries/{id}` shows the job); the time in front makes
/// new ids sort last, so the outbox's key index grows at its end instead of rewriting a
/// random page for every create (profiled: that was a page written per create).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryId([u8; 16]);

impl DeliveryId {
    pub fn new(now: Timestamp) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&now.millis().to_be_bytes()[2..]);
        rand::thread_rng().fill_bytes(&mut bytes[6..]);
        DeliveryId(bytes)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for DeliveryId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut bytes = [0u8; 16];
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(());
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ())?;
        Ok(DeliveryId(bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Queued,
    Sending,
    Sent,
    Failed,
    Expired,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
            DeliveryState::Expired => "expired",
        }
    }
}

impl FromStr for DeliveryState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            DeliveryState::Queued,
            DeliveryState::Sending,
            DeliveryState::Sent,
            DeliveryState::Failed,
            DeliveryState::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or(())
    }
}

/// A job taken by a worker: everything a provider needs to send it.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: DeliveryId,
    pub channel: Channel,
    pub target: String,
    pub content: MessageContent,
    /// The code inside `content`, so that nothing a provider says can carry it further.
    pub code: Option<Password>,
    /// Attempts so far, including the one this claim starts.
    pub attempts: u32,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl DeliveryJob {
    /// A provider's words made safe to keep and log: the code (as written and as spoken)
    /// masked, and the length bounded.
    pub fn scrub(&self, reason: &str) -> String {
        const MAX_CHARS: usize = 300;
        let mut text = reason.to_owned();
        if let Some(code) = &self.code {
            for form in [code.reveal().to_owned(), code.spoken()] {
                if !form.is_empty() {
                    text = text.replace(&form, "***");
                }
            }
        }
        if text.chars().count() > MAX_CHARS {
            text = text.chars().take(MAX_CHARS).collect::<String>() + "…";
        }
        text
    }
}

/// How one attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Sent {
        provider: String,
        message_id: Option<String>,
    },
    Retry {
        at: Timestamp,
        error: String,
    },
    Failed {
        error: String,
    },
    Expired {
        error: String,
    },
}

/// One attempt of one job: how it ended and what each provider in the chain said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The attempt number the claim handed out; a report for an attempt whose lease was
    /// taken over by another worker is ignored.
    pub attempt: u32,
    pub result: AttemptResult,
    pub tries: Vec<ProviderTry>,
}

/// One provider's answer within an attempt, kept in the job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderTry {
    pub provider: String,
    pub outcome: TryOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TryOutcome {
    Sent,
    /// Failed in a way a later attempt (or the next provider) may not.
    Retryable,
    /// Refused for good: the attempt stopped here.
    Permanent,
}

/// What a provider hands back when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's own id for the message (a Twilio SID, a Telegram message id).
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Timeouts, 5xx, refused connections: the next provider, or a later retry, may work.
    #[error("{0}")]
    Retryable(String),
    /// The provider refused the message itself (4xx, an invalid number): retrying is useless.
    #[error("{0}")]
    Permanent(String),
}

/// Something that can put a message in front of a person on one or more channels.
#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError>;
}

/// The ordered providers of each channel: the first that accepts a message wins.
#[derive(Clone, Default)]
pub struct ProviderChains {
    chains: [Vec<Arc<dyn Provider>>; 4],
}

impl ProviderChains {
    pub fn set(&mut self, channel: Channel, providers: Vec<Arc<dyn Provider>>) {
        self.chains[channel as usize] = providers;
    }

    pub fn get(&self, channel: Channel) -> &[Arc<dyn Provider>] {
        &self.chains[channel as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_sort_by_creation_time_and_stay_unique_within_a_millisecond() {
        let t = Timestamp::from_millis(1_790_000_000_000);
        let (a, b) = (DeliveryId::new(t), DeliveryId::new(t));
        assert_ne!(a, b);
        let later = DeliveryId::new(Timestamp::from_millis(t.millis() + 1));
        assert!(later.to_string() > a.to_string() && later.to_string() > b.to_string());
        assert_eq!(a.to_string().parse::<DeliveryId>(), Ok(a));
    }
}
