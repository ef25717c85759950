//! Requests made with an `Idempotency-Key`, and the answers they got.

use rusqlite::{Connection, OptionalExtension, params};

use super::map_err;
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::store::{IdempotencyBegin, StoreError};

pub(super) fn begin(
    conn: &Connection,
    channel: Channel,
    key: &str,
    fingerprint: &str,
    now: Timestamp,
    pending_until: Timestamp,
) -> Result<IdempotencyBegin, StoreError> {
    let held = conn
        .prepare_cached(
            "SELECT fingerprint, answer FROM idempotency
             WHERE channel = ?1 AND key = ?2 AND expires_at > ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![channel.as_str(), key, now.millis()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()
        })
        .map_err(map_err)?;
    Ok(match held {
        Some((held_by, _)) if held_by != fingerprint => IdempotencyBegin::Conflict,
        Some((_, Some(answer))) => IdempotencyBegin::Replay(answer),
        Some((_, None)) => IdempotencyBegin::InProgress,
        None => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (channel, key, fingerprint, answer, expires_at)
                 VALUES (?1, ?2, ?3, NULL, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    channel.as_str(),
                    key,
                    fingerprint,
                    pending_until.millis()
                ])
            })
            .map_err(map_err)?;
            IdempotencyBegin::Proceed
        }
    })
}

pub(super) fn finish(
    conn: &Connection,
    channel: Channel,
    key: &str,
    fingerprint: &str,
    answer: Option<&str>,
    keep_until: Timestamp,
) -> Result<(), StoreError> {
    let result = match answer {
        Some(answer) => conn
            .prepare_cached(
                "UPDATE idempotency SET answer = ?4, expires_at = ?5
                 WHERE channel = ?1 AND key = ?2 AND fingerprint = ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    channel.as_str(),
                    key,
                    fingerprint,
                    answer,
                    keep_until.millis()
                ])
            }),
        None => conn
            .prepare_cached(
                "DELETE FROM idempotency
                 WHERE channel = ?1 AND key = ?2 AND fingerprint = ?3 AND answer IS NULL",
            )
            .and_then(|mut s| s.execute(params![channel.as_str(), key, fingerprint])),
    };
    result.map(|_| ()).map_err(map_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_whose_request_never_finished_is_free_again_after_its_pending_time() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&conn).unwrap();
        let at = Timestamp::from_millis;
        let begin = |now| begin(&conn, Channel::Sms, "k", "fp", at(now), at(now + 60_000));
        assert_eq!(begin(0).unwrap(), IdempotencyBegin::Proceed);
        // Its process died: nothing finishes it.
        assert_eq!(begin(59_999).unwrap(), IdempotencyBegin::InProgress);
        assert_eq!(begin(60_000).unwrap(), IdempotencyBegin::Proceed);
        finish(
            &conn,
            Channel::Sms,
            "k",
            "fp",
            Some("answer"),
            at(86_400_000),
        )
        .unwrap();
        assert_eq!(
            begin(70_000).unwrap(),
            IdempotencyBegin::Replay("answer".into())
        );
    }
}
