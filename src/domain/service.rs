//! The use cases: create a code and enqueue its delivery; check a code.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::delivery::{Dispatch, Reservation};

use super::abuse::{AbuseSettings, SendQuota};
use super::code::{Lifetime, Password};
use super::limits::{LimitHit, LimitKind, LimitRules, LimitRulesUpdate};
use super::message::Templates;
use super::phone_policy::{Country, PhonePolicy, PhoneRefusal};
use super::pumping::{PumpingMode, Scope};
use super::secret::Secret;
use super::test_targets::TestTargets;
use super::verification::CheckOutcome;
use super::{Channel, InvalidField, Target};
use crate::clock::{Clock, Timestamp};
use crate::delivery::DeliveryId;
use crate::metrics::Metrics;
use crate::store::{
    CodeCheck, Counter, CreateOutcome, NewCode, Quota, QuotaOutcome, SharedStore, StoreError,
};

#[derive(Debug, Clone)]
pub struct CodeSettings {
    pub code_length: u8,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_active: u32,
    pub max_attempts: u32,
}

#[derive(Debug)]
pub struct CreateRequest {
    pub channel: Channel,
    pub target: Target,
    pub password: Option<Password>,
    pub lifetime_secs: Option<i64>,
    pub templates: Templates,
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub delivery_id: DeliveryId,
    pub expires_at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum OtpError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("\"ip\" is required while IP limits are set")]
    IpRequired,
    #[error("send limit reached")]
    Limited {
        channel: Channel,
        kind: LimitKind,
        hit: LimitHit,
    },
    #[error("the phone is refused")]
    PhoneRefused {
        channel: Channel,
        refusal: PhoneRefusal,
    },
    #[error("a send quota is used up")]
    QuotaUsedUp {
        channel: Channel,
        quota: SendQuota,
        /// The cooldown's length, for the message.
        cooldown: Duration,
        retry_after_secs: u64,
    },
    #[error("suspected SMS pumping")]
    PumpingSuspected {
        channel: Channel,
        scope: &'static str,
    },
    #[error("too many wrong passwords for this target")]
    FailureBudgetSpent {
        channel: Channel,
        budget: u64,
        window: Duration,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct OtpService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    secret: Arc<Secret>,
    settings: CodeSettings,
    abuse: AbuseSettings,
    dispatch: Arc<Dispatch>,
    metrics: Arc<Metrics>,
    /// When the detector last logged a suspicion (milliseconds), so that an attack
    /// logs a line a minute rather than one per request.
    pumping_logged_at: AtomicI64,
}

impl OtpService {
    pub fn new(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        secret: Arc<Secret>,
        settings: CodeSettings,
        abuse: AbuseSettings,
        dispatch: Arc<Dispatch>,
        metrics: Arc<Metrics>,
    ) -> Self {
        OtpService {
            store,
            clock,
            secret,
            settings,
            abuse,
            dispatch,
            metrics,
            pumping_logged_at: AtomicI64::new(i64::MIN),
        }
    }

    pub async fn create(&self, req: CreateRequest) -> Result<Created, OtpError> {
        let lifetime = match req.lifetime_secs {
            Some(secs) => {
                Lifetime::from_secs(secs, self.settings.max_lifetime.as_secs())?.duration()
            }
            None => self.settings.default_lifetime,
        };
        let generated = req.password.is_none();
        let password = req
            .password
            .unwrap_or_else(|| Password::generate(self.settings.code_length));
        let content = req.templates.render(req.channel, &password, generated)?;
        let target = req.target.key();
        let now = self.clock.now();
        if self
            .abuse
            .test_targets
            .code_of(req.channel, &target)
            .is_some()
        {
            // Nothing is stored or sent: checks compare with the fixed code.
            return Ok(Created {
                delivery_id: DeliveryId::new(now),
                expires_at: now.plus(lifetime),
            });
        }
        let country = self.admit_phone(req.channel, &req.target)?;
        let scopes = self.pumping_scopes(country, req.ip);
        let pumping_keys = self.abuse.pumping.counters_to_read(&scopes, now);
        let pumping = if pumping_keys.is_empty() {
            Vec::new()
        } else {
            self.store.counters(req.channel, &pumping_keys, now).await?
        };
        let quotas = self.abuse.send_quotas(req.channel, &target, country, now);
        let counted: Vec<Quota> = quotas.iter().map(|(_, q)| q.clone()).collect();
        if !counted.is_empty()
            && let QuotaOutcome::Exhausted { index, resets_at } =
                self.store.take_quotas(req.channel, &counted, now).await?
        {
            let (quota, _) = quotas.get(index).ok_or_else(|| {
                StoreError::Internal(format!("the store named quota {index} of {}", quotas.len()))
            })?;
            return Err(OtpError::QuotaUsedUp {
                channel: req.channel,
                quota: *quota,
                cooldown: self.abuse.resend_cooldown,
                retry_after_secs: now.secs_until(resets_at).max(1),
            });
        }
        if let Err(e) = self.watch_for_pumping(req.channel, &scopes, &pumping, now) {
            self.give_back(req.channel, &counted, now).await;
            return Err(e);
        }
        let reservation = self.dispatch.reserve(req.channel, now);
        let code = NewCode {
            channel: req.channel,
            hash: self.secret.code_hash(req.channel, &target, &password),
            failure_budget: self.abuse.failure_budget(&target, now),
            target,
            ip: req.ip,
            now,
            expires_at: now.plus(lifetime),
            max_active: self.settings.max_active,
            delivery_id: DeliveryId::new(now),
            content,
            code: password,
            lease_until: reservation.as_ref().map(Reservation::lease_until),
        };
        let outcome = self.store_code(code, reservation).await;
        match &outcome {
            Ok(_) => {
                self.tally(
                    req.channel,
                    self.abuse.pumping.count_sent(&scopes, now),
                    now,
                )
                .await
            }
            Err(_) => self.give_back(req.channel, &counted, now).await,
        }
        outcome
    }

    /// A refused send does not count against the caps.
    async fn give_back(&self, channel: Channel, counted: &[Quota], now: Timestamp) {
        if counted.is_empty() {
            return;
        }
        if let Err(e) = self.store.return_quotas(channel, counted, now).await {
            tracing::warn!(error = %e, "could not give back the quotas of a refused send");
        }
    }

    /// What the pumping detector watches a send or a check of `channel` under: the
    /// phone's country and the end user's IP (the `ip` the application passes).
    fn pumping_scopes(&self, country: Option<Country>, ip: Option<IpAddr>) -> Vec<Scope> {
        if !self.abuse.pumping.is_on() {
            return Vec::new();
        }
        let Some(country) = country else {
            return Vec::new();
        };
        let mut scopes = vec![Scope::Country(country)];
        scopes.extend(ip.map(Scope::Ip));
        scopes
    }

    /// Judges the send's scopes from `counters`, read as `counters_to_read` lists them.
    fn watch_for_pumping(
        &self,
        channel: Channel,
        scopes: &[Scope],
        counters: &[Counter],
        now: Timestamp,
    ) -> Result<(), OtpError> {
        let pumping = &self.abuse.pumping;
        let Some(suspicion) = pumping.judge(scopes, counters, now) else {
            return Ok(());
        };
        let mode = pumping.mode.to_string();
        self.metrics.count(
            "otpd_pumping_suspected_total",
            &[
                ("channel", channel.as_str()),
                ("scope", suspicion.scope.kind()),
                ("mode", &mode),
            ],
        );
        let last = self.pumping_logged_at.load(Ordering::Relaxed);
        if now.millis().saturating_sub(last) >= 60_000
            && self
                .pumping_logged_at
                .compare_exchange(last, now.millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                channel = channel.as_str(),
                scope = %suspicion.scope,
                window = suspicion.window,
                sent = suspicion.sent,
                verified = suspicion.verified,
                mode = %mode,
                "suspected SMS pumping: codes are sent but not verified"
            );
        }
        if pumping.mode == PumpingMode::Block {
            return Err(OtpError::PumpingSuspected {
                channel,
                scope: suspicion.scope.kind(),
            });
        }
        Ok(())
    }

    /// Adds to counters that only watch (no limit), without failing the request.
    async fn tally(&self, channel: Channel, counters: Vec<Quota>, now: Timestamp) {
        if counters.is_empty() {
            return;
        }
        if let Err(e) = self.store.take_quotas(channel, &counters, now).await {
            tracing::warn!(error = %e, "could not count a send or check for the pumping detector");
        }
    }

    /// Stores the code; its job goes to the worker with `reservation`, or, without one,
    /// the worker is woken to claim it.
    async fn store_code(
        &self,
        code: NewCode,
        reservation: Option<Reservation>,
    ) -> Result<Created, OtpError> {
        let channel = code.channel;
        let (delivery_id, expires_at, now) = (code.delivery_id, code.expires_at, code.now);
        let outcome = match reservation {
            Some(reservation) => {
                let job = code.handed_job();
                let store = Arc::clone(&self.store);
                // A task of its own, so that a client going away mid-request cannot part
                // the stored job from its hand-over: written leased but never handed, it
                // would wait for its lease to end before anyone sent it.
                let stored = tokio::spawn(async move {
                    let outcome = store.create_code(code).await;
                    if let Ok(CreateOutcome::Created) = outcome {
                        reservation.hand(job);
                    }
                    outcome
                });
                stored.await.map_err(|e| {
                    let how = if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    };
                    StoreError::Internal(format!("the task storing a code {how}"))
                })??
            }
            None => {
                let outcome = self.store.create_code(code).await?;
                if outcome == CreateOutcome::Created {
                    self.dispatch.notify(channel);
                }
                outcome
            }
        };
        match outcome {
            CreateOutcome::Created => Ok(Created {
                delivery_id,
                expires_at,
            }),
            CreateOutcome::IpRequired => Err(OtpError::IpRequired),
            CreateOutcome::Limited(kind, hit) => Err(OtpError::Limited { channel, kind, hit }),
            CreateOutcome::FailureBudgetSpent { resets_at } => Err(OtpError::FailureBudgetSpent {
                channel,
                budget: self.abuse.max_failures_per_target,
                window: self.abuse.failure_window,
                retry_after_secs: now.secs_until(resets_at).max(1),
            }),
        }
    }

    /// The phone's country when the channel may send to it; other targets have none.
    fn admit_phone(&self, channel: Channel, target: &Target) -> Result<Option<Country>, OtpError> {
        match target {
            Target::Phone(phone) => self
                .abuse
                .phone_policy
                .admit(channel, phone)
                .map(Some)
                .map_err(|refusal| OtpError::PhoneRefused { channel, refusal }),
            _ => Ok(None),
        }
    }

    /// `ip` is the end user's, when the application passes it: it pairs the check with
    /// the sends from that IP for the pumping detector.
    pub async fn check(
        &self,
        channel: Channel,
        target: &Target,
        password: &Password,
        ip: Option<IpAddr>,
    ) -> Result<CheckOutcome, OtpError> {
        let country = match target {
            Target::Phone(phone) if self.abuse.pumping.is_on() => PhonePolicy::country_of(phone),
            _ => None,
        };
        let target = target.key();
        if let Some(code) = self.abuse.test_targets.code_of(channel, &target) {
            return Ok(if TestTargets::matches(code, password) {
                CheckOutcome::Verified
            } else {
                CheckOutcome::InvalidPassword
            });
        }
        let now = self.clock.now();
        let check = CodeCheck {
            channel,
            hash: self.secret.code_hash(channel, &target, password),
            failure_budget: self.abuse.failure_budget(&target, now),
            target,
            now,
            max_attempts: self.settings.max_attempts,
        };
        let outcome = self.store.check_code(check).await?;
        if outcome == CheckOutcome::Verified {
            let scopes = self.pumping_scopes(country, ip);
            let verified = self.abuse.pumping.count_verified(&scopes, now);
            self.tally(channel, verified, now).await;
        }
        Ok(outcome)
    }

    /// A keyed digest of a create's parameters, for `Idempotency-Key`.
    pub fn request_fingerprint(&self, channel: Channel, canonical_params: &[u8]) -> String {
        self.secret.request_fingerprint(channel, canonical_params)
    }

    pub async fn limit_rules(&self, channel: Channel) -> Result<LimitRules, OtpError> {
        Ok(self.store.limit_rules(channel).await?)
    }

    pub async fn update_limit_rules(
        &self,
        channel: Channel,
        update: LimitRulesUpdate,
    ) -> Result<LimitRules, OtpError> {
        Ok(self.store.update_limit_rules(channel, update).await?)
    }
}
