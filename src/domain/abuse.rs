//! What otpd refuses to protect an operator's SMS budget and its users' accounts, beyond
//! the per-IP and per-target send limits: phones of the wrong kind or country, daily
//! caps, a resend cooldown, and a budget of wrong guesses per target.

use std::time::Duration;

use super::Channel;
use super::phone_policy::{Country, PhonePolicy};
use super::pumping::PumpingSettings;
use super::test_targets::TestTargets;
use crate::clock::Timestamp;
use crate::store::Quota;

const DAY_MILLIS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub struct AbuseSettings {
    pub phone_policy: PhonePolicy,
    /// Sends per channel per UTC day (indexed as `Channel::ALL`); `None` is no cap.
    pub daily_caps: [Option<u64>; 4],
    /// SMS per destination country per UTC day.
    pub daily_sms_cap_per_country: Option<u64>,
    /// Least time between two sends to one target; zero is off.
    pub resend_cooldown: Duration,
    /// Wrong guesses per target within `failure_window` after which sends and checks
    /// for it are refused; zero is off.
    pub max_failures_per_target: u64,
    pub failure_window: Duration,
    pub test_targets: TestTargets,
    pub pumping: PumpingSettings,
}

impl Default for AbuseSettings {
    fn default() -> Self {
        AbuseSettings {
            phone_policy: PhonePolicy::default(),
            daily_caps: [None; 4],
            daily_sms_cap_per_country: None,
            resend_cooldown: Duration::ZERO,
            max_failures_per_target: 100,
            failure_window: Duration::from_secs(24 * 3600),
            test_targets: TestTargets::default(),
            pumping: PumpingSettings::default(),
        }
    }
}

/// Which quota of a send was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendQuota {
    Cooldown,
    DailyCap,
    DailyCapForCountry(Country),
}

impl AbuseSettings {
    /// The quotas one send to `target` counts against, each with what it stands for.
    pub fn send_quotas(
        &self,
        channel: Channel,
        target: &str,
        country: Option<Country>,
        now: Timestamp,
    ) -> Vec<(SendQuota, Quota)> {
        let mut quotas = Vec::new();
        if !self.resend_cooldown.is_zero() {
            quotas.push((
                SendQuota::Cooldown,
                Quota {
                    key: format!("cooldown:{target}"),
                    limit: 1,
                    resets_at: now.plus(self.resend_cooldown),
                },
            ));
        }
        let day = now.millis().div_euclid(DAY_MILLIS);
        let midnight = Timestamp::from_millis((day + 1) * DAY_MILLIS);
        if let Some(limit) = self.daily_caps[channel as usize] {
            quotas.push((
                SendQuota::DailyCap,
                Quota {
                    key: format!("day:{day}"),
                    limit,
                    resets_at: midnight,
                },
            ));
        }
        if let (Channel::Sms, Some(limit), Some(country)) =
            (channel, self.daily_sms_cap_per_country, country)
        {
            quotas.push((
                SendQuota::DailyCapForCountry(country),
                Quota {
                    key: format!("day:{day}:{country}"),
                    limit,
                    resets_at: midnight,
                },
            ));
        }
        quotas
    }

    /// The budget of wrong guesses against `target`, when it is on: a window that
    /// starts at the first failure and refuses at `max_failures_per_target`.
    pub fn failure_budget(&self, target: &str, now: Timestamp) -> Option<Quota> {
        (self.max_failures_per_target > 0).then(|| Quota {
            key: format!("failures:{target}"),
            limit: self.max_failures_per_target,
            resets_at: now.plus(self.failure_window),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_counted_unless_configured() {
        let settings = AbuseSettings::default();
        let now = Timestamp::from_millis(1_790_000_000_000);
        assert!(
            settings
                .send_quotas(Channel::Sms, "1", None, now)
                .is_empty()
        );
        let budget = settings.failure_budget("77011234567", now);
        assert_eq!(
            budget.map(|q| (q.key, q.limit)),
            Some(("failures:77011234567".to_owned(), 100))
        );
        let off = AbuseSettings {
            max_failures_per_target: 0,
            ..AbuseSettings::default()
        };
        assert_eq!(off.failure_budget("77011234567", now), None);
    }

    #[test]
    fn daily_caps_reset_at_utc_midnight_and_the_cooldown_after_its_length() {
        let settings = AbuseSettings {
            daily_caps: [Some(1000), None, None, None],
            daily_sms_cap_per_country: Some(100),
            resend_cooldown: Duration::from_secs(30),
            ..AbuseSettings::default()
        };
        // 2026-11-27 12:00:00 UTC.
        let now = Timestamp::from_millis(1_795_780_800_000);
        let kz: Country = "KZ".parse().unwrap();
        let quotas = settings.send_quotas(Channel::Sms, "77011234567", Some(kz), now);
        let kinds: Vec<_> = quotas.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                SendQuota::Cooldown,
                SendQuota::DailyCap,
                SendQuota::DailyCapForCountry(kz)
            ]
        );
        assert_eq!(quotas[0].1.limit, 1);
        assert_eq!(quotas[0].1.resets_at, now.plus(Duration::from_secs(30)));
        let midnight = Timestamp::from_millis(1_795_824_000_000);
        assert_eq!(quotas[1].1.resets_at, midnight);
        assert_eq!(
            quotas[2].1.key,
            format!("day:{}:KZ", 1_795_780_800_000 / DAY_MILLIS)
        );
        // Calls have no cap here, and no per-country cap ever.
        assert_eq!(
            settings
                .send_quotas(Channel::Call, "77011234567", Some(kz), now)
                .len(),
            1
        );
    }
}
