//! The use cases: create a code and enqueue its delivery; check a code.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::delivery::Wakeups;

use super::code::{Lifetime, Password};
use super::limits::{LimitHit, LimitKind, LimitRules, LimitRulesUpdate};
use super::message::Templates;
use super::secret::Secret;
use super::verification::CheckOutcome;
use super::{Channel, InvalidField, Target};
use crate::clock::{Clock, Timestamp};
use crate::delivery::DeliveryId;
use crate::store::{CodeCheck, CreateOutcome, NewCode, SharedStore, StoreError};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct OtpService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    secret: Arc<Secret>,
    settings: CodeSettings,
    delivery_wakeup: Arc<Wakeups>,
}

impl OtpService {
    pub fn new(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        secret: Arc<Secret>,
        settings: CodeSettings,
        delivery_wakeup: Arc<Wakeups>,
    ) -> Self {
        OtpService {
            store,
            clock,
            secret,
            settings,
            delivery_wakeup,
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
        let code = NewCode {
            channel: req.channel,
            hash: self.secret.code_hash(req.channel, &target, &password),
            target,
            ip: req.ip,
            now,
            expires_at: now.plus(lifetime),
            max_active: self.settings.max_active,
            delivery_id: DeliveryId::new(now),
            content,
            code: password,
        };
        let (delivery_id, expires_at) = (code.delivery_id, code.expires_at);
        match self.store.create_code(code).await? {
            CreateOutcome::Created => {
                self.delivery_wakeup.notify(req.channel);
                Ok(Created {
                    delivery_id,
                    expires_at,
                })
            }
            CreateOutcome::IpRequired => Err(OtpError::IpRequired),
            CreateOutcome::Limited(kind, hit) => Err(OtpError::Limited {
                channel: req.channel,
                kind,
                hit,
            }),
        }
    }

    pub async fn check(
        &self,
        channel: Channel,
        target: &Target,
        password: &Password,
    ) -> Result<CheckOutcome, OtpError> {
        let target = target.key();
        let check = CodeCheck {
            channel,
            hash: self.secret.code_hash(channel, &target, password),
            target,
            now: self.clock.now(),
            max_attempts: self.settings.max_attempts,
        };
        Ok(self.store.check_code(check).await?)
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
