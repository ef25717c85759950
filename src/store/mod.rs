//! Where state lives. Every method is one atomic step, so that concurrent requests (and,
//! on a shared store, several replicas) can never interleave inside a decision.

mod outbox;
mod redis;
mod sqlite;
mod timed;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use self::redis::{RedisOpenError, RedisStore};
pub use sqlite::{OpenError, SqliteStore};
pub use timed::TimedStore;

use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, DeliveryId, DeliveryJob, DeliveryState, ProviderTry};
use crate::domain::Channel;
use crate::domain::code::Password;
use crate::domain::limits::{LimitHit, LimitKind, LimitRules, LimitRulesUpdate, RuleSet};
use crate::domain::message::MessageContent;
use crate::domain::secret::CodeHash;
use crate::domain::verification::CheckOutcome;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written right now; worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupt data.
    #[error("store error: {0}")]
    Internal(String),
}

/// A code to store, with the delivery job that sends it, written together.
#[derive(Debug, Clone)]
pub struct NewCode {
    pub channel: Channel,
    pub target: String,
    pub hash: CodeHash,
    pub ip: Option<IpAddr>,
    pub now: Timestamp,
    pub expires_at: Timestamp,
    pub max_active: u32,
    pub delivery_id: DeliveryId,
    pub content: MessageContent,
    /// Kept with the message so that providers' error texts can be scrubbed of it.
    pub code: Password,
    /// The target's wrong-guess budget, when it is on: a target past it is refused.
    pub failure_budget: Option<Quota>,
    /// Set when the job is handed to this process's worker (`delivery::Dispatch`): it is
    /// written already leased until then, at its first attempt, instead of queued.
    pub lease_until: Option<Timestamp>,
}

impl NewCode {
    /// The job as the worker it is handed to sends it: what a claim would return.
    pub fn handed_job(&self) -> DeliveryJob {
        DeliveryJob {
            id: self.delivery_id,
            channel: self.channel,
            target: self.target.clone(),
            content: self.content.clone(),
            code: Some(self.code.clone()),
            attempts: 1,
            created_at: self.now,
            expires_at: self.expires_at,
        }
    }
}

#[cfg(test)]
impl NewCode {
    /// A code for an `sms` job to `target`, created at 0 ms and expiring at `expires_at`
    /// ms, with no limits in play: what the stores' own tests queue.
    pub(crate) fn queued_for_test(target: &str, expires_at: i64) -> NewCode {
        NewCode {
            channel: Channel::Sms,
            target: target.into(),
            hash: CodeHash([0; 32]),
            ip: None,
            now: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(expires_at),
            max_active: 1,
            delivery_id: DeliveryId::new(Timestamp::from_millis(0)),
            content: MessageContent::Text { text: "x".into() },
            code: Password::parse("123456").unwrap(),
            failure_budget: None,
            lease_until: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// IP rules exist for the channel but the request named no `ip`.
    IpRequired,
    Limited(LimitKind, LimitHit),
    /// The target spent its wrong-guess budget; it refills at `resets_at`.
    FailureBudgetSpent {
        resets_at: Timestamp,
    },
}

/// A code the Telegram bot hands to a chat: `code.hash` is the code-only `link_hash`,
/// `code.target` the chat id. Written with its delivery job, like any code.
#[derive(Debug, Clone)]
pub struct NewLinkCode {
    pub code: NewCode,
    /// The Telegram update that asked for it, so that a redelivered update is not
    /// handled twice.
    pub update_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCodeOutcome {
    Created,
    /// The update was handled before.
    AlreadyHandled,
    /// Another chat holds a live code with the same digits: draw again.
    CodeTaken,
    Limited(LimitHit),
}

/// Failures are counted against every key, each with its own rules; a limit reached on
/// any of them refuses the lookup.
#[derive(Debug, Clone)]
pub struct LinkLookup {
    pub hash: CodeHash,
    pub failure_keys: Vec<(String, RuleSet)>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkLookupOutcome {
    /// The chat the code was sent to; the code is spent.
    Found(String),
    NotFound,
    Limited(LimitHit),
}

#[derive(Debug, Clone)]
pub struct CodeCheck {
    pub channel: Channel,
    pub target: String,
    pub hash: CodeHash,
    pub now: Timestamp,
    pub max_attempts: u32,
    /// The target's wrong-guess budget across its codes, when it is on: past it every
    /// check is `AttemptsExceeded`; a wrong guess counts one, a right one empties it.
    /// Judged in the check's own step, so that a check is one store call.
    pub failure_budget: Option<Quota>,
}

/// Jobs a store operation ended by itself, per channel (indexed as `Channel::ALL`):
/// expired before any worker sent them, or failed as unreadable. Counted in the metrics
/// beside the jobs workers end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndedJobs {
    pub expired: [u64; 4],
    pub failed: [u64; 4],
}

impl EndedJobs {
    pub fn add(&mut self, other: &EndedJobs) {
        for (mine, theirs) in self.expired.iter_mut().zip(other.expired) {
            *mine += theirs;
        }
        for (mine, theirs) in self.failed.iter_mut().zip(other.failed) {
            *mine += theirs;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStats {
    pub channel: Channel,
    pub depth: u64,
    pub oldest_created_at: Option<Timestamp>,
}

/// A counter that refuses once it reaches `limit`. Its first count starts it, and it
/// starts again from zero at `resets_at` (fixed from that first count): a daily cap, a
/// resend cooldown (limit 1), a target's budget of wrong guesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub key: String,
    pub limit: u64,
    pub resets_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// One was counted against every quota.
    Taken,
    /// `quotas[index]` is used up until `resets_at`; nothing was counted.
    Exhausted { index: usize, resets_at: Timestamp },
}

/// A counter's value now: zero, with no reset time, when it was never started or has
/// reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    pub count: u64,
    pub resets_at: Option<Timestamp>,
}

impl Counter {
    /// A counter as a store holds it (milliseconds), judged at `now` by the
    /// application's clock, as both stores do.
    fn stored(count: Option<i64>, resets_at: Option<i64>, now: Timestamp) -> Counter {
        match (count, resets_at) {
            (Some(count), Some(resets_at)) if resets_at > now.millis() => Counter {
                count: count.max(0) as u64,
                resets_at: Some(Timestamp::from_millis(resets_at)),
            },
            _ => Counter::default(),
        }
    }

    /// When a counter that reached `limit` lets through again; `None` while under it.
    pub fn used_up(&self, limit: u64) -> Option<Timestamp> {
        self.resets_at.filter(|_| self.count >= limit)
    }
}

/// What a create with an `Idempotency-Key` finds when it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is new (or its earlier request failed): this request runs, and owns it.
    Proceed,
    /// The same request was answered before: this is its answer, as stored.
    Replay(String),
    /// The key was used for a different request.
    Conflict,
    /// The same request is running right now.
    InProgress,
}

/// What `GET /deliveries/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryStatus {
    pub id: String,
    pub channel: Channel,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's id for the message (a Twilio message SID), once sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: String,
    /// When a queued job will be tried (again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Every provider asked, attempt by attempt, oldest first.
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub attempt: u32,
    pub at: String,
    #[serde(flatten)]
    pub tried: ProviderTry,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Checks the failure budget and the send limits, stores the code (keeping the newest `max_active`), resets
    /// the wrong-guess count, records the send and enqueues the delivery, all or nothing.
    async fn create_code(&self, code: NewCode) -> Result<CreateOutcome, StoreError>;

    /// Compares, counts a failure or spends, per `domain::verification::decide_check`,
    /// and keeps the failure budget's count.
    async fn check_code(&self, check: CodeCheck) -> Result<CheckOutcome, StoreError>;

    async fn limit_rules(&self, channel: Channel) -> Result<LimitRules, StoreError>;

    async fn update_limit_rules(
        &self,
        channel: Channel,
        update: LimitRulesUpdate,
    ) -> Result<LimitRules, StoreError>;

    /// Takes up to `max` due jobs of `channel` for sending, leased until `lease_until`,
    /// each with its attempt count raised. Jobs whose code has expired before sending are
    /// marked `expired` instead.
    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: Timestamp,
        lease_until: Timestamp,
        max: usize,
    ) -> Result<(Vec<DeliveryJob>, EndedJobs), StoreError>;

    /// When the next job of `channel` comes due (a retry, or a lease running out), if any
    /// is waiting.
    async fn next_delivery_due(&self, channel: Channel) -> Result<Option<Timestamp>, StoreError>;

    /// Records how an attempt ended and what each provider said. Ignored when the job's
    /// lease was taken over meanwhile (the report's attempt is no longer the job's).
    async fn finish_attempt(
        &self,
        channel: Channel,
        id: DeliveryId,
        report: AttemptReport,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Checks the chat's send limits, replaces the chat's previous bot code, stores the
    /// new one with its delivery job and marks the update handled, all or nothing.
    async fn create_link_code(&self, code: NewLinkCode) -> Result<LinkCodeOutcome, StoreError>;

    /// Marks an update handled that needs nothing done; false if it was handled before.
    async fn record_update(&self, update_id: i64, now: Timestamp) -> Result<bool, StoreError>;

    /// Finds and spends the bot code, or counts a failure against the ip.
    async fn take_link_code(&self, lookup: LinkLookup) -> Result<LinkLookupOutcome, StoreError>;

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryStatus>, StoreError>;

    /// Counts one against every quota of `channel`, or against none when any of them is
    /// used up, in one step.
    async fn take_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<QuotaOutcome, StoreError>;

    /// Gives back one of each quota `take_quotas` counted, for a send refused after it.
    async fn return_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// The counters' values now, in the order of `keys`.
    async fn counters(
        &self,
        channel: Channel,
        keys: &[String],
        now: Timestamp,
    ) -> Result<Vec<Counter>, StoreError>;

    /// Claims `key` for a request with this `fingerprint` until `pending_until` (after
    /// which a crashed request's key may be used again), or says what holds it.
    async fn begin_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
        pending_until: Timestamp,
    ) -> Result<IdempotencyBegin, StoreError>;

    /// Keeps the answer of the request that owns `key` until `keep_until`, or, without
    /// an answer, frees the key so that the request may be tried again.
    async fn finish_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        answer: Option<String>,
        keep_until: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Removes expired codes, stale guess counts and sends, and old finished jobs.
    async fn purge_expired(&self, now: Timestamp) -> Result<(u64, EndedJobs), StoreError>;

    /// Unfinished jobs per channel (channels with none may be left out).
    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes what was accepted and releases the store.
    async fn close(&self);
}

pub type SharedStore = Arc<dyn Store>;
