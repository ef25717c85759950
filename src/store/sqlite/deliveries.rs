//! The delivery outbox.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::map_err;
use crate::clock::Timestamp;
use crate::delivery::{AttemptResult, DeliveryId, DeliveryJob, DeliveryState};
use crate::domain::Channel;
use crate::store::{DeliveryStatus, NewCode, StoreError};

pub(super) fn enqueue(conn: &Connection, code: &NewCode) -> Result<(), StoreError> {
    let payload = serde_json::to_string(&code.content)
        .map_err(|e| StoreError::Internal(format!("cannot encode a message: {e}")))?;
    let now = code.now.millis();
    conn.prepare_cached(
        "INSERT INTO deliveries (id, channel, target, payload, state, created_at, updated_at,
                                 expires_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?6, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            code.delivery_id.to_string(),
            code.channel.as_str(),
            code.target,
            payload,
            now,
            code.expires_at.millis()
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

pub(super) fn requeue_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries SET state = 'queued', lease_until = NULL WHERE state = 'sending'",
        [],
    )
}

fn parse_channel(s: String) -> Result<Channel, StoreError> {
    s.parse()
        .map_err(|()| StoreError::Internal(format!("unknown channel {s:?} in the outbox")))
}

pub(super) fn claim(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    max: usize,
) -> Result<Vec<DeliveryJob>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let now = now.millis();
    // A code that has expired is worthless to its recipient: do not send it late.
    conn.prepare_cached(
        "UPDATE deliveries
         SET state = 'expired', payload = NULL, lease_until = NULL, updated_at = ?1,
             error = 'the code expired before it could be delivered'
         WHERE state IN ('queued', 'sending') AND expires_at <= ?1
           AND (state = 'queued' OR lease_until <= ?1)",
    )
    .and_then(|mut s| s.execute([now]))
    .map_err(map_err)?;
    let mut stmt = conn
        .prepare_cached(
            "UPDATE deliveries
             SET state = 'sending', lease_until = ?2, attempts = attempts + 1, updated_at = ?1
             WHERE id IN (
                 SELECT id FROM deliveries WHERE state = 'queued' AND next_attempt_at <= ?1
                 UNION ALL
                 SELECT id FROM deliveries WHERE state = 'sending' AND lease_until <= ?1
                 LIMIT ?3)
             RETURNING id, channel, target, payload, attempts, expires_at",
        )
        .map_err(map_err)?;
    let mut rows = stmt
        .query(params![now, lease_until.millis(), max as i64])
        .map_err(map_err)?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        jobs.push(job_from_row(row)?);
    }
    Ok(jobs)
}

fn job_from_row(row: &Row<'_>) -> Result<DeliveryJob, StoreError> {
    let id: String = row.get(0).map_err(map_err)?;
    let payload: Option<String> = row.get(3).map_err(map_err)?;
    let content = serde_json::from_str(payload.as_deref().unwrap_or_default()).map_err(|e| {
        StoreError::Internal(format!("delivery {id} has an unreadable message: {e}"))
    })?;
    Ok(DeliveryJob {
        id: id
            .parse()
            .map_err(|()| StoreError::Internal(format!("bad delivery id {id:?}")))?,
        channel: parse_channel(row.get(1).map_err(map_err)?)?,
        target: row.get(2).map_err(map_err)?,
        content,
        attempts: row.get(4).map_err(map_err)?,
        expires_at: Timestamp::from_millis(row.get(5).map_err(map_err)?),
    })
}

pub(super) fn finish(
    conn: &Connection,
    id: DeliveryId,
    result: &AttemptResult,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = id.to_string();
    let now = now.millis();
    let updated = match result {
        AttemptResult::Sent { provider } => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'sent', provider = ?2, error = NULL, payload = NULL,
                     lease_until = NULL, updated_at = ?3
                 WHERE id = ?1 AND state = 'sending'",
            )
            .and_then(|mut s| s.execute(params![id, provider, now])),
        AttemptResult::Retry { at, error } => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'queued', error = ?2, next_attempt_at = ?3,
                     lease_until = NULL, updated_at = ?4
                 WHERE id = ?1 AND state = 'sending'",
            )
            .and_then(|mut s| s.execute(params![id, error, at.millis(), now])),
        AttemptResult::Failed { error } | AttemptResult::Expired { error } => {
            let state = if matches!(result, AttemptResult::Failed { .. }) {
                DeliveryState::Failed
            } else {
                DeliveryState::Expired
            };
            conn.prepare_cached(
                "UPDATE deliveries SET state = ?2, error = ?3, payload = NULL, lease_until = NULL,
                     updated_at = ?4
                 WHERE id = ?1 AND state = 'sending'",
            )
            .and_then(|mut s| s.execute(params![id, state.as_str(), error, now]))
        }
    }
    .map_err(map_err)?;
    if updated == 0 {
        tracing::warn!(delivery = %id, "a delivery attempt finished after its lease was taken over");
    }
    Ok(())
}

pub(super) fn status(
    conn: &Connection,
    id: DeliveryId,
) -> Result<Option<DeliveryStatus>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT channel, state, attempts, provider, error, created_at, updated_at, expires_at
             FROM deliveries WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .optional()
        })
        .map_err(map_err)?;
    let Some((channel, state, attempts, provider, error, created, updated, expires)) = row else {
        return Ok(None);
    };
    let state: DeliveryState = state
        .parse()
        .map_err(|()| StoreError::Internal(format!("unknown delivery state {state:?}")))?;
    let rfc = |ms| Timestamp::from_millis(ms).to_rfc3339();
    Ok(Some(DeliveryStatus {
        id: id.to_string(),
        channel: parse_channel(channel)?,
        state,
        attempts,
        provider,
        error,
        created_at: rfc(created),
        updated_at: rfc(updated),
        expires_at: rfc(expires),
    }))
}

/// Finished jobs older than `before`, and jobs whose code expired before then (left
/// queued when no worker ran).
pub(super) fn purge(conn: &Connection, before: Timestamp) -> Result<u64, StoreError> {
    let n = conn
        .execute(
            "DELETE FROM deliveries
             WHERE (state IN ('sent', 'failed', 'expired') AND updated_at <= ?1)
                OR expires_at <= ?1",
            [before.millis()],
        )
        .map_err(map_err)?;
    Ok(n as u64)
}
