//! Creating and checking codes, each one transaction.

use rusqlite::{Connection, params};

use super::{Purged, deliveries, limits, map_err, quotas};
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::domain::limits::LimitKind;
use crate::domain::secret::CodeHash;
use crate::domain::verification::{CheckEffect, CheckOutcome, GuessState, decide_check};
use crate::store::{CodeCheck, CreateOutcome, NewCode, StoreError};

pub(super) fn create(conn: &Connection, code: &NewCode) -> Result<CreateOutcome, StoreError> {
    if let Some(budget) = &code.failure_budget {
        let failures = quotas::counter(conn, code.channel, &budget.key, code.now)?;
        if let Some(resets_at) = failures.used_up(budget.limit) {
            return Ok(CreateOutcome::FailureBudgetSpent { resets_at });
        }
    }
    let rules = limits::load(conn, code.channel)?;
    let ip = code.ip.map(|ip| ip.to_string());
    if !rules.ips.is_empty() {
        let Some(ip) = &ip else {
            return Ok(CreateOutcome::IpRequired);
        };
        if let Some(hit) =
            limits::check(conn, code.channel, LimitKind::Ip, ip, &rules.ips, code.now)?
        {
            return Ok(CreateOutcome::Limited(LimitKind::Ip, hit));
        }
    }
    if let Some(hit) = limits::check(
        conn,
        code.channel,
        LimitKind::Target,
        &code.target,
        &rules.targets,
        code.now,
    )? {
        return Ok(CreateOutcome::Limited(LimitKind::Target, hit));
    }

    let channel = code.channel.as_str();
    conn.prepare_cached(
        "INSERT INTO codes (channel, target, hash, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            channel,
            code.target,
            &code.hash.0[..],
            code.expires_at.millis()
        ])
    })
    .map_err(map_err)?;
    // Keep the newest `max_active` live codes; expired ones of this target go too.
    conn.prepare_cached(
        "DELETE FROM codes WHERE channel = ?1 AND target = ?2 AND id NOT IN (
             SELECT id FROM codes WHERE channel = ?1 AND target = ?2 AND expires_at > ?3
             ORDER BY id DESC LIMIT ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            channel,
            code.target,
            code.now.millis(),
            code.max_active
        ])
    })
    .map_err(map_err)?;
    // A new send starts a new round of guesses.
    conn.prepare_cached("DELETE FROM guesses WHERE channel = ?1 AND target = ?2")
        .and_then(|mut s| s.execute(params![channel, code.target]))
        .map_err(map_err)?;
    if let Some(ip) = &ip {
        limits::record_send(conn, code.channel, LimitKind::Ip, ip, code.now)?;
    }
    limits::record_send(
        conn,
        code.channel,
        LimitKind::Target,
        &code.target,
        code.now,
    )?;
    deliveries::enqueue(conn, code)?;
    Ok(CreateOutcome::Created)
}

pub(super) fn check(conn: &Connection, check: &CodeCheck) -> Result<CheckOutcome, StoreError> {
    let Some(budget) = &check.failure_budget else {
        return check_live_codes(conn, check);
    };
    let failures = quotas::counter(conn, check.channel, &budget.key, check.now)?;
    if failures.used_up(budget.limit).is_some() {
        return Ok(CheckOutcome::AttemptsExceeded);
    }
    let outcome = check_live_codes(conn, check)?;
    match outcome {
        CheckOutcome::InvalidPassword => quotas::count_one(conn, check.channel, budget, check.now)?,
        // The budget is of consecutive failures (NIST SP 800-63B): a success ends it.
        CheckOutcome::Verified if failures.count > 0 => {
            quotas::reset(conn, check.channel, &budget.key)?
        }
        _ => {}
    }
    Ok(outcome)
}

fn check_live_codes(conn: &Connection, check: &CodeCheck) -> Result<CheckOutcome, StoreError> {
    let channel = check.channel.as_str();
    let now = check.now.millis();
    let state = conn
        .prepare_cached(
            "SELECT failures, burned FROM guesses
             WHERE channel = ?1 AND target = ?2 AND expires_at > ?3",
        )
        .and_then(|mut s| {
            let mut rows = s.query(params![channel, check.target, now])?;
            match rows.next()? {
                Some(row) => Ok(GuessState {
                    failures: row.get(0)?,
                    burned: row.get(1)?,
                }),
                None => Ok(GuessState::default()),
            }
        })
        .map_err(map_err)?;
    let (live, latest_expiry) = live_codes(conn, check.channel, &check.target, check.now)?;

    let (outcome, effect) = decide_check(state, &live, &check.hash, check.max_attempts);
    match effect {
        CheckEffect::None => {}
        CheckEffect::SpendAll => {
            delete_codes(conn, channel, &check.target)?;
            conn.prepare_cached("DELETE FROM guesses WHERE channel = ?1 AND target = ?2")
                .and_then(|mut s| s.execute(params![channel, check.target]))
                .map_err(map_err)?;
        }
        CheckEffect::RecordFailure(next) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO guesses (channel, target, failures, burned, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    channel,
                    check.target,
                    next.failures,
                    next.burned,
                    latest_expiry
                ])
            })
            .map_err(map_err)?;
            if next.burned {
                delete_codes(conn, channel, &check.target)?;
            }
        }
    }
    Ok(outcome)
}

/// The hashes of the live codes of a target, and when the last of them expires.
fn live_codes(
    conn: &Connection,
    channel: Channel,
    target: &str,
    now: Timestamp,
) -> Result<(Vec<CodeHash>, i64), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT hash, expires_at FROM codes
             WHERE channel = ?1 AND target = ?2 AND expires_at > ?3",
        )
        .map_err(map_err)?;
    let mut rows = stmt
        .query(params![channel.as_str(), target, now.millis()])
        .map_err(map_err)?;
    let mut hashes = Vec::new();
    let mut latest = 0i64;
    while let Some(row) = rows.next().map_err(map_err)? {
        let bytes: Vec<u8> = row.get(0).map_err(map_err)?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::Internal("a stored code hash is not 32 bytes".into()))?;
        hashes.push(CodeHash(hash));
        latest = latest.max(row.get(1).map_err(map_err)?);
    }
    Ok((hashes, latest))
}

fn delete_codes(conn: &Connection, channel: &str, target: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM codes WHERE channel = ?1 AND target = ?2")
        .and_then(|mut s| s.execute(params![channel, target]))
        .map_err(map_err)?;
    Ok(())
}

pub(super) fn purge(
    conn: &Connection,
    now: Timestamp,
    purged: &mut Purged,
) -> Result<(), StoreError> {
    purged.delete(conn, "codes", "id", "expires_at <= ?1", [now.millis()])?;
    purged.delete(
        conn,
        "guesses",
        "channel, target",
        "expires_at <= ?1",
        [now.millis()],
    )?;
    Ok(())
}
