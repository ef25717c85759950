//! A `Store` that times every operation of the store it wraps, for
//! `otpd_store_operation_seconds`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    CodeCheck, Counter, CreateOutcome, DeliveryStatus, EndedJobs, IdempotencyBegin,
    LinkCodeOutcome, LinkLookup, LinkLookupOutcome, NewCode, NewLinkCode, OutboxStats, Quota,
    QuotaOutcome, SharedStore, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, DeliveryId, DeliveryJob};
use crate::domain::Channel;
use crate::domain::limits::{LimitRules, LimitRulesUpdate};
use crate::domain::verification::CheckOutcome;
use crate::metrics::Metrics;

pub struct TimedStore {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    pub fn wrap(inner: SharedStore, metrics: Arc<Metrics>) -> SharedStore {
        Arc::new(TimedStore { inner, metrics })
    }

    async fn timed<T>(&self, operation: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics.observe(
            "otpd_store_operation_seconds",
            &[("operation", operation)],
            started.elapsed(),
        );
        result
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn create_code(&self, code: NewCode) -> Result<CreateOutcome, StoreError> {
        self.timed("create_code", self.inner.create_code(code))
            .await
    }

    async fn check_code(&self, check: CodeCheck) -> Result<CheckOutcome, StoreError> {
        self.timed("check_code", self.inner.check_code(check)).await
    }

    async fn limit_rules(&self, channel: Channel) -> Result<LimitRules, StoreError> {
        self.timed("limit_rules", self.inner.limit_rules(channel))
            .await
    }

    async fn update_limit_rules(
        &self,
        channel: Channel,
        update: LimitRulesUpdate,
    ) -> Result<LimitRules, StoreError> {
        let call = self.inner.update_limit_rules(channel, update);
        self.timed("update_limit_rules", call).await
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: Timestamp,
        lease_until: Timestamp,
        max: usize,
    ) -> Result<(Vec<DeliveryJob>, EndedJobs), StoreError> {
        let call = self.inner.claim_deliveries(channel, now, lease_until, max);
        self.timed("claim_deliveries", call).await
    }

    async fn next_delivery_due(&self, channel: Channel) -> Result<Option<Timestamp>, StoreError> {
        self.timed("next_delivery_due", self.inner.next_delivery_due(channel))
            .await
    }

    async fn finish_attempt(
        &self,
        channel: Channel,
        id: DeliveryId,
        report: AttemptReport,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let call = self.inner.finish_attempt(channel, id, report, now);
        self.timed("finish_attempt", call).await
    }

    async fn create_link_code(&self, code: NewLinkCode) -> Result<LinkCodeOutcome, StoreError> {
        self.timed("create_link_code", self.inner.create_link_code(code))
            .await
    }

    async fn record_update(&self, update_id: i64, now: Timestamp) -> Result<bool, StoreError> {
        self.timed("record_update", self.inner.record_update(update_id, now))
            .await
    }

    async fn take_link_code(&self, lookup: LinkLookup) -> Result<LinkLookupOutcome, StoreError> {
        self.timed("take_link_code", self.inner.take_link_code(lookup))
            .await
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryStatus>, StoreError> {
        self.timed("delivery", self.inner.delivery(id)).await
    }

    async fn take_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<QuotaOutcome, StoreError> {
        self.timed("take_quotas", self.inner.take_quotas(channel, quotas, now))
            .await
    }

    async fn return_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.timed(
            "return_quotas",
            self.inner.return_quotas(channel, quotas, now),
        )
        .await
    }

    async fn counters(
        &self,
        channel: Channel,
        keys: &[String],
        now: Timestamp,
    ) -> Result<Vec<Counter>, StoreError> {
        self.timed("counters", self.inner.counters(channel, keys, now))
            .await
    }

    async fn begin_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
        pending_until: Timestamp,
    ) -> Result<IdempotencyBegin, StoreError> {
        let call = self
            .inner
            .begin_idempotent(channel, key, fingerprint, now, pending_until);
        self.timed("begin_idempotent", call).await
    }

    async fn finish_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        answer: Option<String>,
        keep_until: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let call = self
            .inner
            .finish_idempotent(channel, key, fingerprint, answer, keep_until, now);
        self.timed("finish_idempotent", call).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<(u64, EndedJobs), StoreError> {
        self.timed("purge_expired", self.inner.purge_expired(now))
            .await
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, StoreError> {
        self.timed("outbox_stats", self.inner.outbox_stats()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
