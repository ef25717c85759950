//! The outbox loop: takes due jobs, sends them through the channel's providers in order,
//! and records how each attempt ended.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{AttemptResult, DeliveryJob, ProviderChains, ProviderError};
use crate::clock::{Clock, Timestamp};
use crate::store::SharedStore;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Jobs sent at once; 0 turns delivery off in this process.
    pub concurrency: usize,
    /// How long a claimed job stays with its worker before another may take it.
    pub lease: Duration,
    /// How often to look for retries that came due, when nothing wakes the worker sooner.
    pub poll_interval: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

pub struct Worker {
    store: SharedStore,
    chains: ProviderChains,
    clock: Arc<dyn Clock>,
    settings: DeliverySettings,
    wakeup: Arc<Notify>,
}

impl Worker {
    pub fn new(
        store: SharedStore,
        chains: ProviderChains,
        clock: Arc<dyn Clock>,
        settings: DeliverySettings,
        wakeup: Arc<Notify>,
    ) -> Self {
        Worker {
            store,
            chains,
            clock,
            settings,
            wakeup,
        }
    }

    /// Runs until `shutdown` turns true; the batch in hand is finished first.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let now = self.clock.now();
            let claimed = self
                .store
                .claim_deliveries(
                    now,
                    now.plus(self.settings.lease),
                    self.settings.concurrency,
                )
                .await;
            match claimed {
                Ok(jobs) if !jobs.is_empty() => {
                    self.send_all(jobs).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take delivery jobs"),
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn send_all(self: &Arc<Self>, jobs: Vec<DeliveryJob>) {
        let mut tasks = JoinSet::new();
        for job in jobs {
            let worker = Arc::clone(self);
            tasks.spawn(async move {
                let result = worker.attempt(&job).await;
                let now = worker.clock.now();
                if let Err(e) = worker.store.finish_attempt(job.id, result, now).await {
                    // The lease runs out and the job is taken again: delivered at least once.
                    tracing::warn!(delivery = %job.id, error = %e, "cannot record a delivery attempt");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn attempt(&self, job: &DeliveryJob) -> AttemptResult {
        let providers = self.chains.get(job.channel);
        let mut errors = Vec::new();
        for provider in providers {
            match provider.send(job).await {
                Ok(()) => {
                    tracing::info!(delivery = %job.id, channel = %job.channel, provider = provider.name(), attempt = job.attempts, "delivered");
                    return AttemptResult::Sent {
                        provider: provider.name().to_owned(),
                    };
                }
                Err(ProviderError::Permanent(reason)) => {
                    tracing::warn!(delivery = %job.id, channel = %job.channel, provider = provider.name(), %reason, "delivery refused");
                    return AttemptResult::Failed {
                        error: format!("{}: {reason}", provider.name()),
                    };
                }
                Err(ProviderError::Retryable(reason)) => {
                    tracing::warn!(delivery = %job.id, channel = %job.channel, provider = provider.name(), %reason, "delivery attempt failed");
                    errors.push(format!("{}: {reason}", provider.name()));
                }
            }
        }
        if providers.is_empty() {
            return AttemptResult::Failed {
                error: format!("no provider is configured for {}", job.channel),
            };
        }
        let error = errors.join("; ");
        let now = self.clock.now();
        match retry_at(&self.settings, job.attempts, now, job.expires_at) {
            Some(at) => AttemptResult::Retry { at, error },
            None => AttemptResult::Expired {
                error: format!("code expired before delivery succeeded ({error})"),
            },
        }
    }
}

/// Exponential backoff with jitter in [d/2, d]; none once the code would be expired,
/// since a code that arrives late is useless.
fn retry_at(
    settings: &DeliverySettings,
    attempts: u32,
    now: Timestamp,
    expires_at: Timestamp,
) -> Option<Timestamp> {
    let exp = settings
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(settings.retry_cap);
    let ms = exp.as_millis() as u64;
    let delay = Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)));
    let at = now.plus(delay);
    (at < expires_at).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            concurrency: 1,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_stops_at_expiry() {
        let now = Timestamp::from_millis(0);
        let far = Timestamp::from_millis(10_000_000);
        for (attempts, lo, hi) in [(1, 500, 1_000), (3, 2_000, 4_000), (30, 30_000, 60_000)] {
            let at = retry_at(&settings(), attempts, now, far).unwrap().millis();
            assert!((lo..=hi).contains(&at), "attempt {attempts}: {at}");
        }
        assert_eq!(
            retry_at(&settings(), 10, now, Timestamp::from_millis(200)),
            None
        );
    }
}
