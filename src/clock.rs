//! Time is injected so that expiry, limits and retries can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Notify;

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

#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;

    /// Returns once `now() >= at`. Background loops wait on this rather than on the
    /// runtime's timer, so that a test moving a manual clock wakes them at once.
    async fn sleep_until(&self, at: Timestamp);
}

#[derive(Debug, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    async fn sleep_until(&self, at: Timestamp) {
        // Re-read after waking: the wall clock may have been stepped meanwhile.
        loop {
            let left = at.millis().saturating_sub(self.now().millis());
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
        }
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    pub fn starting_at(t: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicI64::new(t.0),
            moved: Notify::new(),
        })
    }

    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }

    async fn sleep_until(&self, at: Timestamp) {
        loop {
            // Registered before reading the time, so an advance in between is not missed.
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.now() >= at {
                return;
            }
            moved.await;
        }
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

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_is_moved_past_it() {
        let clock = ManualClock::starting_at(Timestamp::from_millis(0));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(Timestamp::from_millis(1_000)).await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(500));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(500));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn secs_until_rounds_up_and_never_goes_negative() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(t.secs_until(Timestamp::from_millis(10_001)), 1);
        assert_eq!(t.secs_until(Timestamp::from_millis(12_000)), 2);
        assert_eq!(t.secs_until(Timestamp::from_millis(9_000)), 0);
    }
}
