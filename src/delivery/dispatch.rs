//! How new jobs reach this process's worker. A job whose channel has a free sending
//! slot is written already leased to this worker and handed over in memory, so that the
//! worker need not claim it back from the store; otherwise the job is written queued
//! and the worker is woken to claim it.
//!
//! A handed job is durable like any other: it is in the store before the request is
//! answered, leased as a claim would have leased it. If this process dies before the
//! job is sent, its lease runs out and any worker takes it (on SQLite, a restart
//! requeues it at once), as for a claimed job whose worker died.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::DeliveryJob;
use crate::clock::Timestamp;
use crate::domain::Channel;

/// A job handed to the worker with the sending slot it holds.
pub(super) struct Handed {
    pub job: DeliveryJob,
    pub slot: OwnedSemaphorePermit,
}

struct ChannelDispatch {
    wakeup: Notify,
    /// Jobs wait queued in the store: new ones queue behind them rather than overtake
    /// them, until the worker's claims have caught up.
    queued: AtomicBool,
    /// The worker's sending slots: a job being sent holds one, claimed or handed.
    slots: Arc<Semaphore>,
    handed: mpsc::UnboundedSender<Handed>,
    /// Taken once, by the channel's worker loop.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
}

pub struct Dispatch {
    channels: [ChannelDispatch; 4],
    lease: Duration,
}

impl Dispatch {
    /// `concurrency` jobs of each channel are sent at once, each leased for `lease`;
    /// with 0 (no worker in this process) every job is queued for other processes.
    pub fn new(concurrency: usize, lease: Duration) -> Dispatch {
        let channel = |_| {
            let (handed, receiver) = mpsc::unbounded_channel();
            ChannelDispatch {
                wakeup: Notify::new(),
                queued: AtomicBool::new(false),
                slots: Arc::new(Semaphore::new(concurrency)),
                handed,
                receiver: Mutex::new(Some(receiver)),
            }
        };
        Dispatch {
            channels: std::array::from_fn(channel),
            lease,
        }
    }

    /// Wakes the channel's worker to claim what was queued.
    pub fn notify(&self, channel: Channel) {
        let dispatch = self.get(channel);
        dispatch.queued.store(true, Ordering::Relaxed);
        dispatch.wakeup.notify_one();
    }

    /// A sending slot for a job about to be created, when the worker has one free and
    /// no job is waiting queued before it.
    pub fn reserve(&self, channel: Channel, now: Timestamp) -> Option<Reservation> {
        let dispatch = self.get(channel);
        if dispatch.queued.load(Ordering::Relaxed) {
            return None;
        }
        let slot = Arc::clone(&dispatch.slots).try_acquire_owned().ok()?;
        Some(Reservation {
            handed: dispatch.handed.clone(),
            slot,
            lease_until: now.plus(self.lease),
        })
    }

    /// The worker's last claim took every due job.
    pub(super) fn drained(&self, channel: Channel) {
        self.get(channel).queued.store(false, Ordering::Relaxed);
    }

    pub(super) fn wakeup(&self, channel: Channel) -> &Notify {
        &self.get(channel).wakeup
    }

    pub(super) fn slots(&self, channel: Channel) -> &Arc<Semaphore> {
        &self.get(channel).slots
    }

    /// The channel's handed jobs; `None` after the first call.
    pub(super) fn take_receiver(
        &self,
        channel: Channel,
    ) -> Option<mpsc::UnboundedReceiver<Handed>> {
        self.get(channel)
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn get(&self, channel: Channel) -> &ChannelDispatch {
        &self.channels[channel as usize]
    }
}

/// A sending slot held for a job being created. Dropped unused (the create was refused
/// or failed), the slot is free again.
pub struct Reservation {
    handed: mpsc::UnboundedSender<Handed>,
    slot: OwnedSemaphorePermit,
    lease_until: Timestamp,
}

impl Reservation {
    /// The lease the job is written with.
    pub fn lease_until(&self) -> Timestamp {
        self.lease_until
    }

    /// Gives the stored job to the worker. Should the worker have stopped meanwhile, the
    /// job stays leased in the store and is sent once the lease runs out.
    pub fn hand(self, job: DeliveryJob) {
        let handed = Handed {
            job,
            slot: self.slot,
        };
        if self.handed.send(handed).is_err() {
            tracing::debug!("the worker has stopped; a handed job waits for its lease to end");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DeliveryId;
    use crate::domain::message::MessageContent;

    fn job(now: Timestamp) -> DeliveryJob {
        DeliveryJob {
            id: DeliveryId::new(now),
            channel: Channel::Sms,
            target: "77011234567".to_owned(),
            content: MessageContent::Text {
                text: "Your code is 1234".to_owned(),
            },
            code: None,
            attempts: 1,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
        }
    }

    #[test]
    fn a_channel_hands_over_as_many_jobs_as_it_has_slots_and_a_refused_create_frees_its_slot() {
        let now = Timestamp::from_millis(1_000);
        let dispatch = Dispatch::new(2, Duration::from_secs(30));
        let first = dispatch.reserve(Channel::Sms, now).unwrap();
        assert_eq!(first.lease_until(), Timestamp::from_millis(31_000));
        let second = dispatch.reserve(Channel::Sms, now).unwrap();
        assert!(
            dispatch.reserve(Channel::Sms, now).is_none(),
            "both slots held"
        );
        assert!(
            dispatch.reserve(Channel::Email, now).is_some(),
            "each channel has its own slots"
        );
        drop(second);
        let mut handed = dispatch.take_receiver(Channel::Sms).unwrap();
        let third = dispatch.reserve(Channel::Sms, now).unwrap();
        first.hand(job(now));
        third.hand(job(now));
        assert!(
            dispatch.reserve(Channel::Sms, now).is_none(),
            "handed jobs hold theirs"
        );
        let received = handed.try_recv().unwrap();
        assert_eq!(received.job.target, "77011234567");
        drop(received);
        assert!(
            dispatch.reserve(Channel::Sms, now).is_some(),
            "a sent job frees its slot"
        );
        assert!(dispatch.take_receiver(Channel::Sms).is_none());
    }

    #[test]
    fn a_new_job_queues_behind_queued_ones_until_the_worker_has_claimed_them() {
        let now = Timestamp::from_millis(0);
        let dispatch = Dispatch::new(4, Duration::from_secs(30));
        dispatch.notify(Channel::Sms);
        assert!(dispatch.reserve(Channel::Sms, now).is_none());
        assert!(dispatch.reserve(Channel::Call, now).is_some());
        dispatch.drained(Channel::Sms);
        assert!(dispatch.reserve(Channel::Sms, now).is_some());
    }

    #[test]
    fn without_a_worker_no_job_is_handed_over() {
        let dispatch = Dispatch::new(0, Duration::from_secs(30));
        for channel in Channel::ALL {
            assert!(
                dispatch
                    .reserve(channel, Timestamp::from_millis(0))
                    .is_none()
            );
        }
    }
}
