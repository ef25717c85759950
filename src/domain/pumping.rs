//! The SMS-pumping detector. Pumping sends codes that nobody types back (the numbers
//! belong to whoever is paid per message), so per destination country and per end-user
//! IP it compares codes sent with codes verified over the last hour and the last day.
//! Each window is estimated from two fixed buckets (this one and the last, the last
//! weighted by how much of it still lies in the window), so it costs a few counters.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use super::phone_policy::Country;
use crate::clock::Timestamp;
use crate::store::{Counter, Quota};

const WINDOWS: [(&str, Duration); 2] = [
    ("hour", Duration::from_secs(3600)),
    ("day", Duration::from_secs(24 * 3600)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpingMode {
    Off,
    /// Counted, logged and exported, but nothing is refused.
    Record,
    /// Sends to a suspect country or from a suspect IP are refused.
    Block,
}

impl FromStr for PumpingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(PumpingMode::Off),
            "record" => Ok(PumpingMode::Record),
            "block" => Ok(PumpingMode::Block),
            other => Err(format!("{other:?} is not one of off, record, block")),
        }
    }
}

impl fmt::Display for PumpingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PumpingMode::Off => "off",
            PumpingMode::Record => "record",
            PumpingMode::Block => "block",
        })
    }
}

/// What a send or a verification is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Country(Country),
    Ip(IpAddr),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Country(_) => "country",
            Scope::Ip(_) => "ip",
        }
    }

    fn key(&self) -> String {
        match self {
            Scope::Country(c) => format!("c:{c}"),
            Scope::Ip(ip) => format!("ip:{ip}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Country(c) => write!(f, "country {c}"),
            Scope::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tally {
    Sent,
    Verified,
}

impl Tally {
    fn as_str(self) -> &'static str {
        match self {
            Tally::Sent => "sent",
            Tally::Verified => "ok",
        }
    }
}

/// A scope whose sends far outrun its verifications.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspicion {
    pub scope: Scope,
    pub window: &'static str,
    pub sent: f64,
    pub verified: f64,
}

#[derive(Debug, Clone)]
pub struct PumpingSettings {
    pub mode: PumpingMode,
    /// Sends per verification above which a scope is suspect.
    pub max_ratio: f64,
    /// Sends in a window below which no scope is judged (small numbers say nothing).
    pub min_sends: u64,
}

impl Default for PumpingSettings {
    fn default() -> Self {
        PumpingSettings {
            mode: PumpingMode::Off,
            max_ratio: 10.0,
            min_sends: 50,
        }
    }
}

fn bucket(now: Timestamp, window: Duration) -> (i64, f64) {
    let len = window.as_millis() as i64;
    let n = now.millis().div_euclid(len);
    let into = (now.millis() - n * len) as f64 / len as f64;
    (n, into)
}

fn key(tally: Tally, window: &str, n: i64, scope: &Scope) -> String {
    format!("pump:{}:{window}:{n}:{}", tally.as_str(), scope.key())
}

impl PumpingSettings {
    pub fn is_on(&self) -> bool {
        self.mode != PumpingMode::Off
    }

    /// The counters `judge` needs, in its order: per scope and window, sent and
    /// verified, each this bucket and the last.
    pub fn counters_to_read(&self, scopes: &[Scope], now: Timestamp) -> Vec<String> {
        let mut keys = Vec::new();
        for scope in scopes {
            for (window, len) in WINDOWS {
                let (n, _) = bucket(now, len);
                for tally in [Tally::Sent, Tally::Verified] {
                    keys.push(key(tally, window, n, scope));
                    keys.push(key(tally, window, n - 1, scope));
                }
            }
        }
        keys
    }

    /// The first scope whose sends outrun its verifications, given the counters read.
    pub fn judge(
        &self,
        scopes: &[Scope],
        counters: &[Counter],
        now: Timestamp,
    ) -> Option<Suspicion> {
        let mut values = counters.iter().map(|c| c.count as f64);
        for scope in scopes {
            for (window, len) in WINDOWS {
                let (_, into) = bucket(now, len);
                let mut estimate = || {
                    let (current, last) = (values.next()?, values.next()?);
                    Some(current + last * (1.0 - into))
                };
                let (sent, verified) = (estimate()?, estimate()?);
                if sent >= self.min_sends as f64 && sent > self.max_ratio * verified.max(1.0) {
                    return Some(Suspicion {
                        scope: scope.clone(),
                        window,
                        sent,
                        verified,
                    });
                }
            }
        }
        None
    }

    /// The counters one accepted send adds to.
    pub fn count_sent(&self, scopes: &[Scope], now: Timestamp) -> Vec<Quota> {
        Self::count(Tally::Sent, scopes, now)
    }

    /// The counters one verified code adds to.
    pub fn count_verified(&self, scopes: &[Scope], now: Timestamp) -> Vec<Quota> {
        Self::count(Tally::Verified, scopes, now)
    }

    fn count(tally: Tally, scopes: &[Scope], now: Timestamp) -> Vec<Quota> {
        let mut quotas = Vec::new();
        for scope in scopes {
            for (window, len) in WINDOWS {
                let (n, _) = bucket(now, len);
                let len = len.as_millis() as i64;
                quotas.push(Quota {
                    key: key(tally, window, n, scope),
                    limit: u64::MAX,
                    // Read again as the last bucket during the next one.
                    resets_at: Timestamp::from_millis((n + 2) * len),
                });
            }
        }
        quotas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(values: &[u64]) -> Vec<Counter> {
        values
            .iter()
            .map(|&count| Counter {
                count,
                resets_at: None,
            })
            .collect()
    }

    fn settings() -> PumpingSettings {
        PumpingSettings {
            mode: PumpingMode::Block,
            max_ratio: 10.0,
            min_sends: 50,
        }
    }

    // 2026-11-27 12:30:00 UTC: half of this hour's bucket and of this day's has passed...
    // of the hour: 30 minutes; of the day: 12.5 hours.
    const HALF_PAST_NOON: i64 = 1_795_782_600_000;

    #[test]
    fn a_country_with_sends_and_no_verifications_is_suspect() {
        let kz = Scope::Country("KZ".parse().unwrap());
        let now = Timestamp::from_millis(HALF_PAST_NOON);
        let keys = settings().counters_to_read(std::slice::from_ref(&kz), now);
        assert_eq!(keys.len(), 8);
        assert!(keys[0].starts_with("pump:sent:hour:") && keys[0].ends_with(":c:KZ"));
        // hour: sent 60 now, 0 before; verified 0.
        let suspicion = settings()
            .judge(
                std::slice::from_ref(&kz),
                &counters(&[60, 0, 0, 0, 60, 0, 0, 0]),
                now,
            )
            .unwrap();
        assert_eq!((suspicion.window, suspicion.sent), ("hour", 60.0));
    }

    #[test]
    fn verified_codes_and_small_numbers_clear_a_scope() {
        let ip = Scope::Ip("203.0.113.7".parse().unwrap());
        let now = Timestamp::from_millis(HALF_PAST_NOON);
        // 60 sent, 20 verified: a ratio of 3.
        assert_eq!(
            settings().judge(
                std::slice::from_ref(&ip),
                &counters(&[60, 0, 20, 0, 60, 0, 20, 0]),
                now
            ),
            None
        );
        // 40 sent, none verified: too few to judge.
        assert_eq!(
            settings().judge(
                std::slice::from_ref(&ip),
                &counters(&[40, 0, 0, 0, 40, 0, 0, 0]),
                now
            ),
            None
        );
        // The last hour's 80 sends count half, 30 minutes into this one: 40 + 20 = 60.
        let s = settings()
            .judge(&[ip], &counters(&[20, 80, 0, 0, 20, 80, 0, 0]), now)
            .unwrap();
        assert_eq!(s.sent, 60.0);
    }

    #[test]
    fn sends_are_counted_in_this_hour_and_this_day_and_kept_through_the_next() {
        let kz = Scope::Country("KZ".parse().unwrap());
        let now = Timestamp::from_millis(HALF_PAST_NOON);
        let quotas = settings().count_sent(&[kz], now);
        assert_eq!(quotas.len(), 2);
        // The hour bucket of 12:00 lives until 14:00.
        assert_eq!(
            quotas[0].resets_at.millis(),
            HALF_PAST_NOON - 1_800_000 + 7_200_000
        );
    }
}
