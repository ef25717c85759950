//! Codes the Telegram bot hands out and `/target` takes back, and the record of handled
//! Telegram updates.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Purged, deliveries, limits, map_err, targets};
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::domain::limits::LimitKind;
use crate::store::{LinkCodeOutcome, LinkLookup, LinkLookupOutcome, NewLinkCode, StoreError};

/// Long enough for Telegram's own redelivery of a webhook call (it gives up after a day).
const HANDLED_UPDATES_KEPT: Duration = Duration::from_secs(24 * 3600);

pub(super) fn create(conn: &Connection, link: &NewLinkCode) -> Result<LinkCodeOutcome, StoreError> {
    let code = &link.code;
    if let Some(id) = link.update_id
        && handled(conn, id)?
    {
        return Ok(LinkCodeOutcome::AlreadyHandled);
    }
    let rules = limits::load(conn, Channel::Telegram)?;
    // The chat's sends count here as the codes sent to it do (codes.rs).
    let mut chat = targets::load(conn, Channel::Telegram, &code.target)?.unwrap_or_default();
    if let Some(hit) = chat.limit_hit(&rules.targets, code.now) {
        mark_handled(conn, link.update_id, code.now)?;
        return Ok(LinkCodeOutcome::Limited(hit));
    }
    let now = code.now.millis();
    conn.prepare_cached("DELETE FROM link_codes WHERE hash = ?1 AND expires_at <= ?2")
        .and_then(|mut s| s.execute(params![&code.hash.0[..], now]))
        .map_err(map_err)?;
    let taken = conn
        .prepare_cached("SELECT 1 FROM link_codes WHERE hash = ?1")
        .and_then(|mut s| s.exists([&code.hash.0[..]]))
        .map_err(map_err)?;
    if taken {
        return Ok(LinkCodeOutcome::CodeTaken);
    }
    // A chat has one live code: the newest message asked for it. The replaced code's
    // reply, if still waiting (a retry, say), must not arrive after the new one.
    conn.prepare_cached(
        "UPDATE deliveries
         SET state = 'failed', payload = NULL, lease_until = NULL, updated_at = ?2,
             error = 'replaced by a newer code for the same chat'
         WHERE state = 'queued'
           AND id IN (SELECT delivery_id FROM link_codes WHERE chat_id = ?1)",
    )
    .and_then(|mut s| s.execute(params![code.target, now]))
    .map_err(map_err)?;
    conn.prepare_cached("DELETE FROM link_codes WHERE chat_id = ?1")
        .and_then(|mut s| s.execute([&code.target]))
        .map_err(map_err)?;
    conn.prepare_cached(
        "INSERT INTO link_codes (hash, chat_id, expires_at, delivery_id) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            &code.hash.0[..],
            code.target,
            code.expires_at.millis(),
            code.delivery_id.to_string()
        ])
    })
    .map_err(map_err)?;
    chat.add_send(&rules, code.now);
    targets::save(conn, Channel::Telegram.as_str(), &code.target, &chat)?;
    deliveries::enqueue(conn, code)?;
    mark_handled(conn, link.update_id, code.now)?;
    Ok(LinkCodeOutcome::Created)
}

fn handled(conn: &Connection, update_id: i64) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM telegram_updates WHERE update_id = ?1")
        .and_then(|mut s| s.exists([update_id]))
        .map_err(map_err)
}

fn mark_handled(
    conn: &Connection,
    update_id: Option<i64>,
    now: Timestamp,
) -> Result<(), StoreError> {
    if let Some(id) = update_id {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO telegram_updates (update_id, handled_at) VALUES (?1, ?2)",
        )
        .and_then(|mut s| s.execute(params![id, now.millis()]))
        .map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn record_update(
    conn: &Connection,
    update_id: i64,
    now: Timestamp,
) -> Result<bool, StoreError> {
    if handled(conn, update_id)? {
        return Ok(false);
    }
    mark_handled(conn, Some(update_id), now)?;
    Ok(true)
}

pub(super) fn take(
    conn: &Connection,
    lookup: &LinkLookup,
) -> Result<LinkLookupOutcome, StoreError> {
    for (key, rules) in &lookup.failure_keys {
        if let Some(hit) = limits::check(
            conn,
            Channel::Telegram,
            LimitKind::FailedLookup,
            key,
            rules,
            lookup.now,
        )? {
            return Ok(LinkLookupOutcome::Limited(hit));
        }
    }
    let chat: Option<String> = conn
        .prepare_cached(
            "DELETE FROM link_codes WHERE hash = ?1 AND expires_at > ?2 RETURNING chat_id",
        )
        .and_then(|mut s| {
            s.query_row(params![&lookup.hash.0[..], lookup.now.millis()], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(map_err)?;
    if let Some(chat) = chat {
        return Ok(LinkLookupOutcome::Found(chat));
    }
    for (key, _) in &lookup.failure_keys {
        limits::record_send(
            conn,
            Channel::Telegram,
            LimitKind::FailedLookup,
            key,
            lookup.now,
        )?;
    }
    Ok(LinkLookupOutcome::NotFound)
}

/// Expired codes, and handled updates old enough that Telegram no longer resends them.
pub(super) fn purge(
    conn: &Connection,
    now: Timestamp,
    purged: &mut Purged,
) -> Result<(), StoreError> {
    purged.delete(
        conn,
        "link_codes",
        "hash",
        "expires_at <= ?1",
        [now.millis()],
    )?;
    purged.delete(
        conn,
        "telegram_updates",
        "update_id",
        "handled_at <= ?1",
        [now.minus(HANDLED_UPDATES_KEPT).millis()],
    )?;
    Ok(())
}
