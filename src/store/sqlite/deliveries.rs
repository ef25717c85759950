//! The delivery outbox.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{PURGE_STEP, Purged, map_err};
use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, DeliveryId, DeliveryJob, DeliveryState};
use crate::domain::Channel;
use crate::store::outbox::{AttemptEnd, Payload, StoredTry, cap_history};
use crate::store::{DeliveryStatus, EndedJobs, NewCode, OutboxStats, StoreError};

/// Writes the code's job queued, or, when it is handed to this process's worker, as a
/// claim would leave it: `sending`, leased, at its first attempt.
pub(super) fn enqueue(conn: &Connection, code: &NewCode) -> Result<(), StoreError> {
    let payload = Payload::encode(code)?;
    let now = code.now.millis();
    let (state, attempts) = match code.lease_until {
        Some(_) => ("sending", 1),
        None => ("queued", 0),
    };
    conn.prepare_cached(
        "INSERT INTO deliveries (id, channel, target, payload, state, created_at, updated_at,
                                 expires_at, next_attempt_at, attempts, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?7, ?5, ?5, ?6, ?5, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            code.delivery_id.to_string(),
            code.channel.as_str(),
            code.target,
            payload,
            now,
            code.expires_at.millis(),
            state,
            attempts,
            code.lease_until.map(Timestamp::millis),
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

pub(super) fn requeue_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(REQUEUE_ORPHANS, [])
}

const REQUEUE_ORPHANS: &str =
    "UPDATE deliveries SET state = 'queued', lease_until = NULL WHERE state = 'sending'";

fn parse_channel(s: String) -> Result<Channel, StoreError> {
    s.parse()
        .map_err(|()| StoreError::Internal(format!("unknown channel {s:?} in the outbox")))
}

pub(super) fn claim(
    conn: &Connection,
    channel: Channel,
    now: Timestamp,
    lease_until: Timestamp,
    max: usize,
) -> Result<(Vec<DeliveryJob>, EndedJobs), StoreError> {
    let mut ended = EndedJobs::default();
    if max == 0 {
        return Ok((Vec::new(), ended));
    }
    let now = now.millis();
    let (expired, more) = expire_lapsed(conn, channel, Timestamp::from_millis(now))?;
    ended.expired[channel as usize] = expired;
    if more {
        // The claim below would take lapsed jobs too. None is taken this time: the
        // worker finds jobs due at once and claims again, each claim ending a step more.
        return Ok((Vec::new(), ended));
    }
    let mut stmt = conn.prepare_cached(CLAIM).map_err(map_err)?;
    let mut rows = stmt
        .query(params![
            now,
            lease_until.millis(),
            max as i64,
            channel.as_str()
        ])
        .map_err(map_err)?;
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        match job_from_row(row) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                // One damaged row must not stop its whole channel: it fails alone.
                tracing::error!(error = %e, "a delivery job cannot be read; marking it failed");
                unreadable.push(row.get::<_, String>(0).map_err(map_err)?);
            }
        }
    }
    drop(rows);
    ended.failed[channel as usize] = unreadable.len() as u64;
    for id in unreadable {
        conn.prepare_cached(
            "UPDATE deliveries SET state = 'failed', payload = NULL, lease_until = NULL,
                 error = 'the stored job could not be read', updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, now]))
        .map_err(map_err)?;
    }
    Ok((jobs, ended))
}

const CLAIM: &str = "UPDATE deliveries
     SET state = 'sending', lease_until = ?2, attempts = attempts + 1, updated_at = ?1
     WHERE id IN (
         SELECT id FROM deliveries
         WHERE channel = ?4 AND state = 'queued' AND next_attempt_at <= ?1
         UNION ALL
         SELECT id FROM deliveries
         WHERE channel = ?4 AND state = 'sending' AND lease_until <= ?1
         LIMIT ?3)
     RETURNING id, channel, target, payload, attempts, expires_at, created_at";

/// A code that has expired is worthless to its recipient: its job ends `expired`, and its
/// message is erased, whether or not a worker is running. One channel and one state at
/// a time, so that each statement reads a range of that state's index: a claim must not
/// read the whole backlog. A job being sent expires only once its lease lapsed too.
///
/// At most `PURGE_STEP` jobs per state at a time, since every request waits for the
/// writer meanwhile: ending a backlog of lapsed jobs in one statement held them all for
/// hundreds of milliseconds (BENCHMARKS.md, finding 37). True when a state may have
/// more.
fn expire_lapsed(
    conn: &Connection,
    channel: Channel,
    now: Timestamp,
) -> Result<(u64, bool), StoreError> {
    let (mut expired, mut more) = (0, false);
    for sql in EXPIRE_LAPSED {
        let ended = conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![now.millis(), channel.as_str(), PURGE_STEP]))
            .map_err(map_err)?;
        expired += ended as u64;
        more |= ended >= PURGE_STEP;
    }
    Ok((expired, more))
}

/// Ends the jobs that `$waiting` picks as expired (?1: now, ?2: the channel, ?3: how
/// many at most).
macro_rules! expire_where {
    ($waiting:literal) => {
        concat!(
            "UPDATE deliveries
             SET state = 'expired', payload = NULL, lease_until = NULL, updated_at = ?1,
                 error = 'the code expired before it could be delivered'
                         || coalesce(' (last error: ' || error || ')', '')
             WHERE id IN (SELECT id FROM deliveries WHERE channel = ?2 AND ",
            $waiting,
            " LIMIT ?3)"
        )
    };
}

const EXPIRE_LAPSED: [&str; 2] = [
    expire_where!("state = 'queued' AND expires_at <= ?1"),
    expire_where!("state = 'sending' AND lease_until <= ?1 AND expires_at <= ?1"),
];

pub(super) fn next_due(
    conn: &Connection,
    channel: Channel,
) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = conn
        .prepare_cached(NEXT_DUE)
        .and_then(|mut s| s.query_row([channel.as_str()], |r| r.get(0)))
        .map_err(map_err)?;
    Ok(at.map(Timestamp::from_millis))
}

const NEXT_DUE: &str = "SELECT min(at) FROM (
     SELECT min(next_attempt_at) AS at FROM deliveries
     WHERE channel = ?1 AND state = 'queued'
     UNION ALL
     SELECT min(lease_until) FROM deliveries
     WHERE channel = ?1 AND state = 'sending')";

fn job_from_row(row: &Row<'_>) -> Result<DeliveryJob, StoreError> {
    let id: String = row.get(0).map_err(map_err)?;
    let payload: Option<String> = row.get(3).map_err(map_err)?;
    let (content, code) = Payload::decode(payload.as_deref(), &id)?;
    Ok(DeliveryJob {
        id: id
            .parse()
            .map_err(|()| StoreError::Internal(format!("bad delivery id {id:?}")))?,
        channel: parse_channel(row.get(1).map_err(map_err)?)?,
        target: row.get(2).map_err(map_err)?,
        content,
        code,
        attempts: row.get(4).map_err(map_err)?,
        expires_at: Timestamp::from_millis(row.get(5).map_err(map_err)?),
        created_at: Timestamp::from_millis(row.get(6).map_err(map_err)?),
    })
}

pub(super) fn finish(
    conn: &Connection,
    id: DeliveryId,
    report: &AttemptReport,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = id.to_string();
    let history: Option<String> = conn
        .prepare_cached(
            "SELECT history FROM deliveries WHERE id = ?1 AND state = 'sending' AND attempts = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![id, report.attempt], |r| r.get(0))
                .optional()
        })
        .map_err(map_err)?;
    let Some(history) = history else {
        tracing::warn!(delivery = %id, attempt = report.attempt, "a delivery attempt finished after its lease was taken over");
        return Ok(());
    };
    let history = append_history(&history, report, now)?;
    let now = now.millis();
    let end = AttemptEnd::of(report);
    conn.prepare_cached(
        "UPDATE deliveries
         SET state = ?2, provider = coalesce(?3, provider), provider_message_id = ?4, error = ?5,
             next_attempt_at = coalesce(?6, next_attempt_at),
             payload = CASE WHEN ?2 = 'queued' THEN payload END,
             lease_until = NULL, updated_at = ?7, history = ?8
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            end.state.as_str(),
            end.provider,
            end.message_id,
            end.error,
            end.next_attempt_at.map(Timestamp::millis),
            now,
            history
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

fn append_history(
    history: &str,
    report: &AttemptReport,
    now: Timestamp,
) -> Result<String, StoreError> {
    let mut entries: Vec<StoredTry> = serde_json::from_str(history)
        .map_err(|e| StoreError::Internal(format!("unreadable delivery history: {e}")))?;
    entries.extend(StoredTry::from_report(report, now));
    cap_history(&mut entries);
    serde_json::to_string(&entries)
        .map_err(|e| StoreError::Internal(format!("cannot encode a delivery history: {e}")))
}

pub(super) fn status(
    conn: &Connection,
    id: DeliveryId,
) -> Result<Option<DeliveryStatus>, StoreError> {
    let rfc = |ms| Timestamp::from_millis(ms).to_rfc3339();
    let row = conn
        .prepare_cached(
            "SELECT channel, state, attempts, provider, provider_message_id, error,
                    created_at, updated_at, expires_at, next_attempt_at, history
             FROM deliveries WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| {
                let state: String = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    state.clone(),
                    r.get::<_, String>(10)?,
                    DeliveryStatus {
                        id: id.to_string(),
                        channel: Channel::Sms,
                        state: DeliveryState::Queued,
                        attempts: r.get(2)?,
                        provider: r.get(3)?,
                        provider_message_id: r.get(4)?,
                        error: r.get(5)?,
                        created_at: rfc(r.get(6)?),
                        updated_at: rfc(r.get(7)?),
                        expires_at: rfc(r.get(8)?),
                        next_attempt_at: (state == "queued")
                            .then(|| r.get(9).map(rfc))
                            .transpose()?,
                        history: Vec::new(),
                    },
                ))
            })
            .optional()
        })
        .map_err(map_err)?;
    let Some((channel, state, history, mut status)) = row else {
        return Ok(None);
    };
    status.channel = parse_channel(channel)?;
    status.state = state
        .parse()
        .map_err(|()| StoreError::Internal(format!("unknown delivery state {state:?}")))?;
    let history: Vec<StoredTry> = serde_json::from_str(&history)
        .map_err(|e| StoreError::Internal(format!("unreadable delivery history: {e}")))?;
    status.history = history.into_iter().map(StoredTry::into_entry).collect();
    Ok(Some(status))
}

/// Jobs whose code expired before `before`, whatever their state (a queued one was
/// left when no worker ran).
pub(super) fn purge(
    conn: &Connection,
    now: Timestamp,
    before: Timestamp,
    ended: &mut EndedJobs,
    purged: &mut Purged,
) -> Result<(), StoreError> {
    for channel in Channel::ALL {
        let (expired, more) = expire_lapsed(conn, channel, now)?;
        ended.expired[channel as usize] += expired;
        purged.more |= more;
    }
    // In steps along the ended jobs' index: every job whose code expired has ended
    // now. A job goes `before` (a day) after its code expired, as on Redis.
    purged.delete(
        conn,
        "deliveries",
        "id",
        PURGEABLE,
        params![before.millis()],
    )
}

const PURGEABLE: &str = "state NOT IN ('queued', 'sending') AND expires_at <= ?1";

/// Unfinished jobs per channel, and when the oldest was created.
pub(super) fn stats(conn: &Connection) -> Result<Vec<OutboxStats>, StoreError> {
    let mut stmt = conn.prepare_cached(STATS).map_err(map_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(map_err)?;
    // Every channel, with zeros where nothing waits (as the Redis store answers).
    Channel::ALL
        .into_iter()
        .map(|channel| {
            let row = rows.iter().find(|(c, _, _)| c == channel.as_str());
            Ok(OutboxStats {
                channel,
                depth: row.map_or(0, |r| r.1),
                oldest_created_at: row.and_then(|r| r.2).map(Timestamp::from_millis),
            })
        })
        .collect()
}

/// Each state apart, so that each reads only its own index.
const STATS: &str = "SELECT channel, sum(n), min(oldest) FROM (
     SELECT channel, count(*) AS n, min(created_at) AS oldest FROM deliveries
     WHERE state = 'queued' GROUP BY channel
     UNION ALL
     SELECT channel, count(*), min(created_at) FROM deliveries
     WHERE state = 'sending' GROUP BY channel)
 GROUP BY channel";

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite plans for `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn outbox() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("schema.sql")).unwrap();
        conn
    }

    /// A partial index is used only when the query names its condition exactly, and
    /// nothing fails when it is not: the query reads the whole outbox instead, sent jobs
    /// and all, under the writer. Each statement a claim, a purge or the metrics run must
    /// read only an index.
    #[test]
    fn the_outbox_statements_read_indexes_never_the_whole_outbox() {
        let conn = outbox();
        let purge = format!("SELECT id FROM deliveries WHERE {PURGEABLE} LIMIT 500");
        let statements = [CLAIM, NEXT_DUE, STATS, REQUEUE_ORPHANS, &purge]
            .into_iter()
            .chain(EXPIRE_LAPSED);
        for sql in statements {
            let plan = plan(&conn, sql);
            let reads: Vec<_> = plan.iter().filter(|s| s.contains(" deliveries")).collect();
            assert!(!reads.is_empty(), "no read of the outbox in {plan:?}");
            for step in reads {
                assert!(
                    step.contains("USING INDEX deliveries_")
                        || step.contains("USING COVERING INDEX deliveries_")
                        || step.contains("USING PRIMARY KEY"),
                    "{sql}\nreads the outbox without an index: {step}"
                );
            }
        }
    }

    #[test]
    fn the_depth_counts_queued_and_sending_jobs_and_the_oldest_of_either() {
        let conn = outbox();
        for (id, channel, state, created_at) in [
            ("01", "sms", "queued", 30),
            ("02", "sms", "sending", 10),
            ("03", "sms", "sent", 5),
            ("04", "email", "sending", 20),
            ("05", "email", "failed", 1),
            ("06", "call", "expired", 1),
        ] {
            conn.execute(
                "INSERT INTO deliveries (id, channel, target, state, created_at, updated_at,
                                         expires_at, next_attempt_at)
                 VALUES (?1, ?2, 't', ?3, ?4, ?4, 100, ?4)",
                params![id, channel, state, created_at],
            )
            .unwrap();
        }
        let depths: Vec<_> = stats(&conn)
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.channel,
                    s.depth,
                    s.oldest_created_at.map(Timestamp::millis),
                )
            })
            .collect();
        assert_eq!(
            depths,
            [
                (Channel::Sms, 2, Some(10)),
                (Channel::Call, 0, None),
                (Channel::Email, 1, Some(20)),
                (Channel::Telegram, 0, None),
            ]
        );
    }
}
