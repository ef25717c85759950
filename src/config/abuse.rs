//! Abuse resistance: which phones may get codes, daily caps, the resend cooldown, the
//! wrong-guess budget and test targets (see `domain::abuse`).

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Redacted};
use crate::domain::Channel;
use crate::domain::abuse::AbuseSettings;
use crate::domain::phone_policy::{PhonePolicy, parse_countries};
use crate::domain::pumping::{PumpingMode, PumpingSettings};
use crate::domain::test_targets::TestTargets;

#[derive(Debug, Clone, Args)]
pub struct AbuseConfig {
    /// Only these countries get SMS and calls (ISO codes, comma-separated, e.g. KZ,UZ); unset allows all.
    #[arg(
        long,
        env = "OTP_PHONE_COUNTRIES_ALLOW",
        value_name = "OTP_PHONE_COUNTRIES_ALLOW"
    )]
    pub phone_countries_allow: Option<String>,

    /// These countries never get SMS or calls (ISO codes, comma-separated).
    #[arg(
        long,
        env = "OTP_PHONE_COUNTRIES_DENY",
        value_name = "OTP_PHONE_COUNTRIES_DENY"
    )]
    pub phone_countries_deny: Option<String>,

    /// SMS sent per UTC day at most; unset is no cap.
    #[arg(long, env = "OTP_DAILY_CAP_SMS", value_name = "OTP_DAILY_CAP_SMS")]
    pub daily_cap_sms: Option<u64>,

    /// Calls made per UTC day at most.
    #[arg(long, env = "OTP_DAILY_CAP_CALL", value_name = "OTP_DAILY_CAP_CALL")]
    pub daily_cap_call: Option<u64>,

    /// E-mails sent per UTC day at most.
    #[arg(long, env = "OTP_DAILY_CAP_EMAIL", value_name = "OTP_DAILY_CAP_EMAIL")]
    pub daily_cap_email: Option<u64>,

    /// Telegram messages sent per UTC day at most.
    #[arg(
        long,
        env = "OTP_DAILY_CAP_TELEGRAM",
        value_name = "OTP_DAILY_CAP_TELEGRAM"
    )]
    pub daily_cap_telegram: Option<u64>,

    /// SMS sent to any one country per UTC day at most.
    #[arg(
        long,
        env = "OTP_DAILY_CAP_SMS_PER_COUNTRY",
        value_name = "OTP_DAILY_CAP_SMS_PER_COUNTRY"
    )]
    pub daily_cap_sms_per_country: Option<u64>,

    /// Seconds between two sends to one target (0 is off; 30 is a good value).
    #[arg(long, env = "OTP_RESEND_COOLDOWN", value_name = "OTP_RESEND_COOLDOWN", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub resend_cooldown: u64,

    /// Wrong passwords per target in 24 hours after which its sends and checks are refused until the window passes (0 is off).
    #[arg(
        long,
        env = "OTP_MAX_FAILURES_PER_TARGET",
        value_name = "OTP_MAX_FAILURES_PER_TARGET",
        default_value_t = 100
    )]
    pub max_failures_per_target: u64,

    /// The SMS-pumping detector: off, record (count, log and export suspects) or block (also refuse their sends).
    #[arg(
        long,
        env = "OTP_PUMPING_MODE",
        value_name = "OTP_PUMPING_MODE",
        default_value = "off"
    )]
    pub pumping_mode: PumpingMode,

    /// Codes sent per code verified, over the last hour or day, above which a country or an end-user ip is suspect.
    #[arg(
        long,
        env = "OTP_PUMPING_MAX_RATIO",
        value_name = "OTP_PUMPING_MAX_RATIO",
        default_value_t = 10.0
    )]
    pub pumping_max_ratio: f64,

    /// Codes sent to a country or for an ip within the window below which the detector does not judge.
    #[arg(
        long,
        env = "OTP_PUMPING_MIN_SENDS",
        value_name = "OTP_PUMPING_MIN_SENDS",
        default_value_t = 50
    )]
    pub pumping_min_sends: u64,

    /// Targets with a fixed code, never sent and never limited, e.g. sms:79990000000=123456,email:qa@example.com=000000.
    #[arg(
        long,
        env = "OTP_TEST_TARGETS",
        value_name = "OTP_TEST_TARGETS",
        hide_env_values = true
    )]
    pub test_targets: Option<Redacted>,
}

impl AbuseConfig {
    pub fn settings(&self) -> Result<AbuseSettings, ConfigError> {
        let countries = |variable: &'static str, raw: &Option<String>| {
            raw.as_deref()
                .map(parse_countries)
                .transpose()
                .map_err(|reason| ConfigError::new(variable, reason))
        };
        if !(self.pumping_max_ratio.is_finite() && self.pumping_max_ratio >= 1.0) {
            return Err(ConfigError::new(
                "OTP_PUMPING_MAX_RATIO",
                "must be a number of at least 1",
            ));
        }
        let test_targets = match &self.test_targets {
            Some(raw) => TestTargets::parse(&raw.0)
                .map_err(|reason| ConfigError::new("OTP_TEST_TARGETS", reason))?,
            None => TestTargets::default(),
        };
        let mut daily_caps = [None; 4];
        for (channel, cap) in [
            (Channel::Sms, self.daily_cap_sms),
            (Channel::Call, self.daily_cap_call),
            (Channel::Email, self.daily_cap_email),
            (Channel::Telegram, self.daily_cap_telegram),
        ] {
            daily_caps[channel as usize] = cap;
        }
        Ok(AbuseSettings {
            phone_policy: PhonePolicy {
                allow: countries("OTP_PHONE_COUNTRIES_ALLOW", &self.phone_countries_allow)?,
                deny: countries("OTP_PHONE_COUNTRIES_DENY", &self.phone_countries_deny)?
                    .unwrap_or_default(),
            },
            daily_caps,
            daily_sms_cap_per_country: self.daily_cap_sms_per_country,
            resend_cooldown: Duration::from_secs(self.resend_cooldown),
            max_failures_per_target: self.max_failures_per_target,
            failure_window: Duration::from_secs(24 * 3600),
            test_targets,
            pumping: PumpingSettings {
                mode: self.pumping_mode,
                max_ratio: self.pumping_max_ratio,
                min_sends: self.pumping_min_sends,
            },
        })
    }
}
