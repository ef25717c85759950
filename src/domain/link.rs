//! Linking a Telegram chat to an application: the bot hands a chat a code, the
//! application trades the code (typed by its user) for the chat id at `/target`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Channel;
use super::code::Password;
use super::limits::{LimitHit, Rule, RuleSet};
use super::message::link_message;
use super::secret::Secret;
use crate::clock::Clock;
use crate::delivery::{DeliveryId, Dispatch};
use crate::metrics::Metrics;
use crate::store::{
    LinkCodeOutcome, LinkLookup, LinkLookupOutcome, NewCode, NewLinkCode, SharedStore, StoreError,
};

/// Drawing a code that a live one already has is rare (8 digits against a few live
/// codes); drawing it this many times in a row means something else is wrong.
const DRAWS: usize = 8;

#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub code_length: u8,
    pub lifetime: Duration,
    pub template: String,
    /// Wrong `/target` codes per ip in ten minutes.
    pub failures_per_10_minutes: u32,
}

/// What became of a chat's request for a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRequest {
    Sent,
    AlreadyHandled,
    Limited(LimitHit),
}

pub struct TelegramLink {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    secret: Arc<Secret>,
    settings: LinkSettings,
    failure_rules: RuleSet,
    peer_failure_rules: RuleSet,
    dispatch: Arc<Dispatch>,
    metrics: Arc<Metrics>,
}

impl TelegramLink {
    pub fn new(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        secret: Arc<Secret>,
        settings: LinkSettings,
        dispatch: Arc<Dispatch>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let per_10_minutes = |rate: i64| -> Result<RuleSet, String> {
            RuleSet::new(vec![Rule::new(10, rate)?], "OTP_TARGET_FAILURES").map_err(|e| e.reason)
        };
        let failures = i64::from(settings.failures_per_10_minutes);
        let failure_rules = per_10_minutes(failures)?;
        let peer_failure_rules = per_10_minutes(failures * 10)?;
        Ok(TelegramLink {
            store,
            clock,
            secret,
            settings,
            failure_rules,
            peer_failure_rules,
            dispatch,
            metrics,
        })
    }

    /// Hands `chat_id` a fresh code (replacing its previous one) and queues the reply.
    pub async fn code_for_chat(
        &self,
        chat_id: i64,
        update_id: Option<i64>,
    ) -> Result<CodeRequest, StoreError> {
        for _ in 0..DRAWS {
            let password = Password::generate(self.settings.code_length);
            let now = self.clock.now();
            let code = NewCode {
                channel: Channel::Telegram,
                target: chat_id.to_string(),
                hash: self.secret.link_hash(&password),
                ip: None,
                now,
                expires_at: now.plus(self.settings.lifetime),
                max_active: 1,
                delivery_id: DeliveryId::new(now),
                content: link_message(&self.settings.template, &password, self.settings.lifetime),
                code: password,
                failure_budget: None,
                // Bot codes are few: they are queued and claimed, not handed over.
                lease_until: None,
            };
            let outcome = self
                .store
                .create_link_code(NewLinkCode { code, update_id })
                .await?;
            return Ok(match outcome {
                LinkCodeOutcome::Created => {
                    self.dispatch.notify(Channel::Telegram);
                    CodeRequest::Sent
                }
                LinkCodeOutcome::AlreadyHandled => CodeRequest::AlreadyHandled,
                LinkCodeOutcome::Limited(hit) => CodeRequest::Limited(hit),
                LinkCodeOutcome::CodeTaken => continue,
            });
        }
        Err(StoreError::Internal(format!(
            "{DRAWS} codes in a row were already live; is OTP_TELEGRAM_CODE_LENGTH too short?"
        )))
    }

    /// Notes an update that asks for nothing, so polling does not fetch it again.
    pub async fn skip_update(&self, update_id: i64) -> Result<(), StoreError> {
        self.store
            .record_update(update_id, self.clock.now())
            .await
            .map(|_| ())
    }

    /// The chat a code was sent to, spending the code. Wrong codes count against the end
    /// user's `ip` (or, when the caller names none, the connecting `peer`). The peer also
    /// has a budget ten times larger, so that naming a new `ip` with every guess does
    /// not buy unlimited guesses.
    pub async fn take(
        &self,
        password: &Password,
        ip: Option<IpAddr>,
        peer: IpAddr,
    ) -> Result<LinkLookupOutcome, StoreError> {
        let mut failure_keys = vec![(ip.unwrap_or(peer).to_string(), self.failure_rules.clone())];
        if ip.is_some_and(|ip| ip != peer) {
            failure_keys.push((format!("peer {peer}"), self.peer_failure_rules.clone()));
        }
        let lookup = LinkLookup {
            hash: self.secret.link_hash(password),
            failure_keys,
            now: self.clock.now(),
        };
        let outcome = self.store.take_link_code(lookup).await?;
        match outcome {
            LinkLookupOutcome::NotFound => {
                self.metrics.count("otpd_target_lookup_failures_total", &[]);
            }
            LinkLookupOutcome::Limited(_) => self.metrics.count(
                "otpd_limit_rejections_total",
                &[("channel", "telegram"), ("kind", "failed_lookup")],
            ),
            LinkLookupOutcome::Found(_) => {}
        }
        Ok(outcome)
    }
}
