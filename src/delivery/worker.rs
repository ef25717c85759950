//! The outbox loop: takes due jobs, sends them through the channel's providers in order,
//! and records how each attempt ended.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::dispatch::{Dispatch, Handed};
use super::{
    AttemptReport, AttemptResult, DeliveryJob, ProviderChains, ProviderError, ProviderTry,
    TryOutcome,
};
use crate::clock::{Clock, Timestamp};
use crate::domain::Channel;
use crate::metrics::Metrics;
use crate::store::{EndedJobs, SharedStore, StoreError};

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Jobs of one channel sent at once; 0 turns delivery off in this process.
    pub concurrency: usize,
    /// How long a claimed job stays with its worker before another may take it.
    pub lease: Duration,
    /// The longest one provider may take with one message.
    pub provider_timeout: Duration,
    /// The longest wait between looks at the outbox, for jobs other processes queued.
    pub poll_interval: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

pub struct Worker {
    store: SharedStore,
    chains: ProviderChains,
    clock: Arc<dyn Clock>,
    settings: DeliverySettings,
    dispatch: Arc<Dispatch>,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        store: SharedStore,
        chains: ProviderChains,
        clock: Arc<dyn Clock>,
        settings: DeliverySettings,
        dispatch: Arc<Dispatch>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Worker {
            store,
            chains,
            clock,
            settings,
            dispatch,
            metrics,
        }
    }

    /// One loop per channel, so that a slow provider on one channel never holds up
    /// another. Each runs until `shutdown` turns true, then finishes what it holds.
    pub fn spawn(self: Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        Channel::ALL
            .into_iter()
            .map(|channel| tokio::spawn(Arc::clone(&self).run(channel, shutdown.clone())))
            .collect()
    }

    async fn run(self: Arc<Self>, channel: Channel, mut shutdown: watch::Receiver<bool>) {
        let Some(mut handed) = self.dispatch.take_receiver(channel) else {
            tracing::error!(%channel, "a second delivery loop was started for the channel");
            return;
        };
        let slots = Arc::clone(self.dispatch.slots(channel));
        let wakeup = self.dispatch.wakeup(channel);
        let mut in_flight = JoinSet::new();
        // Whether the store may hold due jobs this loop has not seen: the loop claims only
        // then, not after every send, since a claim costs the store a write.
        let mut look = true;
        let mut next_due = None;
        let mut poll_at = tokio::time::Instant::now();
        while !stopping(&shutdown) {
            while let Some(done) = in_flight.try_join_next() {
                look |= needs_look(channel, done);
            }
            while let Ok(Handed { job, slot }) = handed.try_recv() {
                self.start(&mut in_flight, job, Some(slot));
            }
            let free = slots.available_permits();
            if look && free > 0 {
                poll_at = tokio::time::Instant::now() + self.settings.poll_interval;
                match self.claim(channel, free, &mut in_flight).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        look = false;
                        self.dispatch.drained(channel);
                        next_due = self.next_due(channel).await;
                    }
                    // After a store error, only the poll interval: due jobs would look due
                    // at once and the loop would spin against a store that keeps failing.
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "cannot take delivery jobs");
                        look = false;
                        next_due = None;
                    }
                }
            }
            let clock = Arc::clone(&self.clock);
            let due = async move {
                match next_due {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wakeup.notified() => look = true,
                Some(Handed { job, slot }) = handed.recv() => {
                    self.start(&mut in_flight, job, Some(slot));
                }
                _ = due => {
                    look = true;
                    next_due = None;
                }
                Some(done) = in_flight.join_next() => {
                    look |= needs_look(channel, done);
                    if look {
                        // Sends recorded in one commit end together: letting the others
                        // end first makes one claim for all of their slots.
                        tokio::task::yield_now().await;
                    }
                }
                // Jobs other processes queued wake nobody here.
                _ = tokio::time::sleep_until(poll_at) => {
                    look = true;
                    poll_at = tokio::time::Instant::now() + self.settings.poll_interval;
                }
                _ = shutdown.changed() => {}
            }
        }
        // What was handed over before the close is sent; a job handed after it stays
        // leased in the store until its lease ends.
        handed.close();
        while let Ok(Handed { job, slot }) = handed.try_recv() {
            self.start(&mut in_flight, job, Some(slot));
        }
        while let Some(done) = in_flight.join_next().await {
            needs_look(channel, done);
        }
    }

    /// Claims up to `free` due jobs; true when it got as many as asked (more may be
    /// waiting). Slots are not held during the claim, so that codes created meanwhile
    /// can still be handed over; a job whose slot such a code took is sent without one,
    /// a moment over `concurrency`.
    async fn claim(
        self: &Arc<Self>,
        channel: Channel,
        free: usize,
        in_flight: &mut JoinSet<bool>,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let lease_until = now.plus(self.settings.lease);
        let (jobs, ended) = self
            .store
            .claim_deliveries(channel, now, lease_until, free)
            .await?;
        count_ended_by_store(&self.metrics, &ended);
        let full = jobs.len() >= free;
        let slots = self.dispatch.slots(channel);
        for job in jobs {
            let slot = Arc::clone(slots).try_acquire_owned().ok();
            self.start(in_flight, job, slot);
        }
        Ok(full)
    }

    /// When the next job is due, if any waits (a retry, or a lease running out).
    async fn next_due(&self, channel: Channel) -> Option<Timestamp> {
        let due = self.store.next_delivery_due(channel).await;
        due.unwrap_or_else(|e| {
            tracing::warn!(%channel, error = %e, "cannot read when the next delivery is due");
            None
        })
    }

    /// Sends `job` in a task of its own, which holds its sending slot until it ends.
    fn start(
        self: &Arc<Self>,
        in_flight: &mut JoinSet<bool>,
        job: DeliveryJob,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let worker = Arc::clone(self);
        in_flight.spawn(async move {
            let look = worker.deliver(job).await;
            drop(slot);
            look
        });
    }

    /// Sends and records one attempt; true when the job is still to be sent (a retry
    /// queued, or the attempt not recorded), so that the loop looks for when it is due.
    async fn deliver(&self, job: DeliveryJob) -> bool {
        let report = self.attempt(&job).await;
        let now = self.clock.now();
        let ended = Ended::of(&job, &report, now);
        // Counted once recorded: an unrecorded attempt is made again, and counted then.
        match self
            .store
            .finish_attempt(job.channel, job.id, report, now)
            .await
        {
            Ok(()) => match ended {
                Some(ended) => {
                    ended.count(&self.metrics, job.channel);
                    false
                }
                None => true,
            },
            // The lease runs out and the job is taken again: delivered at least once.
            Err(e) => {
                tracing::warn!(delivery = %job.id, error = %e, "cannot record a delivery attempt");
                true
            }
        }
    }

    async fn attempt(&self, job: &DeliveryJob) -> AttemptReport {
        let report = |result, tries| AttemptReport {
            attempt: job.attempts,
            result,
            tries,
        };
        let providers = self.chains.get(job.channel);
        if providers.is_empty() {
            let error = format!("no provider is configured for {}", job.channel);
            return report(AttemptResult::Failed { error }, Vec::new());
        }
        let mut tries = Vec::new();
        let mut errors = Vec::new();
        for provider in providers {
            let name = provider.name();
            let mut tried = ProviderTry {
                provider: name.to_owned(),
                outcome: TryOutcome::Sent,
                error: None,
                message_id: None,
            };
            // On the injected clock, so a test can make a hanging provider time out.
            let deadline = self.clock.now().plus(self.settings.provider_timeout);
            let sent = tokio::select! {
                sent = provider.send(job) => sent,
                _ = self.clock.sleep_until(deadline) => Err(ProviderError::Retryable(format!(
                    "no answer within {} s",
                    self.settings.provider_timeout.as_secs()
                ))),
            };
            match sent {
                Ok(receipt) => {
                    tracing::info!(delivery = %job.id, channel = %job.channel, provider = name, attempt = job.attempts, "delivered");
                    tried.message_id = receipt.message_id.clone();
                    tries.push(tried);
                    let result = AttemptResult::Sent {
                        provider: name.to_owned(),
                        message_id: receipt.message_id,
                    };
                    return report(result, tries);
                }
                Err(ProviderError::Permanent(reason)) => {
                    let reason = job.scrub(&reason);
                    tracing::warn!(delivery = %job.id, channel = %job.channel, provider = name, %reason, "delivery refused");
                    let error = format!("{name}: {reason}");
                    tried.outcome = TryOutcome::Permanent;
                    tried.error = Some(reason);
                    tries.push(tried);
                    return report(AttemptResult::Failed { error }, tries);
                }
                Err(ProviderError::Retryable(reason)) => {
                    let reason = job.scrub(&reason);
                    tracing::warn!(delivery = %job.id, channel = %job.channel, provider = name, %reason, "delivery attempt failed");
                    errors.push(format!("{name}: {reason}"));
                    tried.outcome = TryOutcome::Retryable;
                    tried.error = Some(reason);
                    tries.push(tried);
                }
            }
        }
        let error = errors.join("; ");
        let now = self.clock.now();
        let result = match retry_at(&self.settings, job.attempts, now, job.expires_at) {
            Some(at) => AttemptResult::Retry { at, error },
            None => AttemptResult::Expired {
                error: format!("the code expired before delivery succeeded ({error})"),
            },
        };
        report(result, tries)
    }
}

/// How an attempt ended a job, for the metrics: the final state, the provider it ended
/// with, and (when sent) how long the code took to go out.
struct Ended {
    state: &'static str,
    provider: String,
    latency: Option<Duration>,
}

impl Ended {
    /// `None` for a retry: the job has not ended.
    fn of(job: &DeliveryJob, report: &AttemptReport, now: Timestamp) -> Option<Ended> {
        let last_provider = || report.tries.last().map_or("none", |t| t.provider.as_str());
        let (state, provider, latency) = match &report.result {
            AttemptResult::Retry { .. } => return None,
            AttemptResult::Sent { provider, .. } => {
                let took = (now.millis() - job.created_at.millis()).max(0) as u64;
                ("sent", provider.as_str(), Some(Duration::from_millis(took)))
            }
            AttemptResult::Failed { .. } => ("failed", last_provider(), None),
            AttemptResult::Expired { .. } => ("expired", last_provider(), None),
        };
        Some(Ended {
            state,
            provider: provider.to_owned(),
            latency,
        })
    }

    fn count(&self, metrics: &Metrics, channel: Channel) {
        let channel = channel.as_str();
        if let Some(took) = self.latency {
            metrics.observe(
                "otpd_delivery_latency_seconds",
                &[("channel", channel)],
                took,
            );
        }
        metrics.count(
            "otpd_deliveries_total",
            &[
                ("channel", channel),
                ("provider", &self.provider),
                ("state", self.state),
            ],
        );
    }
}

/// Jobs the store ended by itself (expired unsent, unreadable), counted with those
/// workers end, so that an alert on failures sees them too.
pub fn count_ended_by_store(metrics: &Metrics, ended: &EndedJobs) {
    for channel in Channel::ALL {
        let i = channel as usize;
        for (state, n) in [("expired", ended.expired[i]), ("failed", ended.failed[i])] {
            if n > 0 {
                metrics.add(
                    "otpd_deliveries_total",
                    &[
                        ("channel", channel.as_str()),
                        ("provider", "none"),
                        ("state", state),
                    ],
                    n,
                );
            }
        }
    }
}

/// True once shutdown was asked for, or nobody is left to ask (the app was dropped).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Whether a finished send leaves its job to be sent again (see `Worker::deliver`). A
/// send that panicked leaves its job leased; it is taken again when the lease ends.
fn needs_look(channel: Channel, done: Result<bool, tokio::task::JoinError>) -> bool {
    done.unwrap_or_else(|e| {
        tracing::error!(%channel, error = %e, "a delivery task failed; its job will be taken again after the lease");
        true
    })
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
            provider_timeout: Duration::from_secs(10),
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
