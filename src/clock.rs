//! Time is injected so that expiry, limits and retries can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Milliseconds keep sliding windows exact while
/// fitting SQLite's integer column and Redis scores alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Whole seconds from `self` until `later`, rounded up, never negative.
    pub fn secs_until(self, later: Timestamp) -> u64 {
        let ms = later.0.saturating_sub(self.0).max(0) as u64;
        ms.div_ceil(1000)
    }

    /// RFC 3339 in UTC with second precision, e.g. `2026-11-27T13:16:11Z`.
    pub fn to_rfc3339(self) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_at(t: Timestamp) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(t.0)))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(
            Timestamp::from_millis(1_795_000_000_000).to_rfc3339(),
            "2026-11-18T11:06:40Z"
        );
    }

    #[test]
    fn secs_until_rounds_up_and_never_goes_negative() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(t.secs_until(Timestamp::from_millis(10_001)), 1);
        assert_eq!(t.secs_until(Timestamp::from_millis(12_000)), 2);
        assert_eq!(t.secs_until(Timestamp::from_millis(9_000)), 0);
    }
}
