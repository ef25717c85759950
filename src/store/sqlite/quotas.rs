//! Quotas and counters (daily caps, resend cooldowns, failure budgets).

use rusqlite::{Connection, OptionalExtension, params};

use super::map_err;
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::store::{Counter, Quota, QuotaOutcome, StoreError};

pub(super) fn counter(
    conn: &Connection,
    channel: Channel,
    key: &str,
    now: Timestamp,
) -> Result<Counter, StoreError> {
    let (count, resets_at) = conn
        .prepare_cached("SELECT count, resets_at FROM quotas WHERE channel = ?1 AND key = ?2")
        .and_then(|mut s| {
            s.query_row(params![channel.as_str(), key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(map_err)?
        .unzip();
    Ok(Counter::stored(count, resets_at, now))
}

pub(super) fn take(
    conn: &Connection,
    channel: Channel,
    quotas: &[Quota],
    now: Timestamp,
) -> Result<QuotaOutcome, StoreError> {
    for (index, quota) in quotas.iter().enumerate() {
        let current = counter(conn, channel, &quota.key, now)?;
        if current.count >= quota.limit {
            return Ok(QuotaOutcome::Exhausted {
                index,
                resets_at: current.resets_at.unwrap_or(quota.resets_at),
            });
        }
    }
    for quota in quotas {
        count_one(conn, channel, quota, now)?;
    }
    Ok(QuotaOutcome::Taken)
}

/// Counts one against `quota` whatever its limit; a counter past its reset starts
/// again, with this quota's window.
pub(super) fn count_one(
    conn: &Connection,
    channel: Channel,
    quota: &Quota,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO quotas (channel, key, count, resets_at) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (channel, key) DO UPDATE SET
             count = CASE WHEN resets_at <= ?4 THEN 1 ELSE count + 1 END,
             resets_at = CASE WHEN resets_at <= ?4 THEN excluded.resets_at
                              ELSE resets_at END",
    )
    .and_then(|mut s| {
        s.execute(params![
            channel.as_str(),
            quota.key,
            quota.resets_at.millis(),
            now.millis()
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

pub(super) fn give_back(
    conn: &Connection,
    channel: Channel,
    quotas: &[Quota],
    now: Timestamp,
) -> Result<(), StoreError> {
    for quota in quotas {
        conn.prepare_cached(
            "UPDATE quotas SET count = count - 1
             WHERE channel = ?1 AND key = ?2 AND resets_at > ?3 AND count > 0",
        )
        .and_then(|mut s| s.execute(params![channel.as_str(), quota.key, now.millis()]))
        .map_err(map_err)?;
    }
    Ok(())
}
