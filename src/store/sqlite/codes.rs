//! Creating and checking codes, each one transaction, on the target's row (targets.rs).

use rusqlite::Connection;

use super::{deliveries, limits, targets};
use crate::domain::limits::LimitKind;
use crate::domain::verification::{CheckEffect, CheckOutcome, decide_check};
use crate::store::{CodeCheck, CreateOutcome, NewCode, StoreError};

pub(super) fn create(conn: &Connection, code: &NewCode) -> Result<CreateOutcome, StoreError> {
    let mut row = targets::load(conn, code.channel, &code.target)?.unwrap_or_default();
    if let Some(budget) = &code.failure_budget
        && let Some(resets_at) = row.budget(code.now).used_up(budget.limit)
    {
        return Ok(CreateOutcome::FailureBudgetSpent { resets_at });
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
    if let Some(hit) = row.limit_hit(&rules.targets, code.now) {
        return Ok(CreateOutcome::Limited(LimitKind::Target, hit));
    }

    row.add_code(code.hash, code.expires_at, code.max_active, code.now);
    // A new send starts a new round of guesses; the budget goes on.
    row.end_round();
    row.add_send(&rules, code.now);
    targets::save(conn, code.channel.as_str(), &code.target, &row)?;
    if let Some(ip) = &ip {
        limits::record_send(conn, code.channel, LimitKind::Ip, ip, code.now)?;
    }
    deliveries::enqueue(conn, code)?;
    Ok(CreateOutcome::Created)
}

pub(super) fn check(conn: &Connection, check: &CodeCheck) -> Result<CheckOutcome, StoreError> {
    // No row: nothing was ever sent to the target, or all of it expired.
    let mut row = targets::load(conn, check.channel, &check.target)?.unwrap_or_default();
    if let Some(budget) = &check.failure_budget
        && row.budget(check.now).used_up(budget.limit).is_some()
    {
        return Ok(CheckOutcome::AttemptsExceeded);
    }
    let (live, latest_expiry) = row.live_codes(check.now);
    let (outcome, effect) =
        decide_check(row.round(check.now), &live, &check.hash, check.max_attempts);
    match effect {
        CheckEffect::None => {}
        CheckEffect::SpendAll => {
            row.codes.clear();
            row.end_round();
            // The budget is of consecutive failures (NIST SP 800-63B): a success ends
            // it. The sends stay: they still count.
            row.end_budget();
        }
        CheckEffect::RecordFailure(next) => {
            (row.failures, row.burned, row.round_until) =
                (next.failures, next.burned, latest_expiry);
            if next.burned {
                row.codes.clear();
            }
        }
    }
    // A wrong password counts against the budget, whether or not a code was live.
    let spent = check
        .failure_budget
        .as_ref()
        .filter(|_| outcome == CheckOutcome::InvalidPassword);
    if let Some(budget) = spent {
        row.spend(check.now, budget.resets_at);
    }
    if effect != CheckEffect::None || spent.is_some() {
        targets::save(conn, check.channel.as_str(), &check.target, &row)?;
    }
    Ok(outcome)
}
