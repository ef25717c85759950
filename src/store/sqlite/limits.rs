//! Limit rules and the record of accepted sends they are checked against.

use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Purged, map_err};
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::domain::limits::{LimitHit, LimitKind, LimitRules, LimitRulesUpdate, RuleSet};
use crate::store::StoreError;

fn kind_str(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Ip => "ip",
        LimitKind::Target => "target",
        LimitKind::FailedLookup => "failed_lookup",
    }
}

pub(super) fn load(conn: &Connection, channel: Channel) -> Result<LimitRules, StoreError> {
    let mut rules = LimitRules::default();
    let mut stmt = conn
        .prepare_cached("SELECT kind, rules FROM limit_rules WHERE channel = ?1")
        .map_err(map_err)?;
    let mut rows = stmt.query([channel.as_str()]).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let kind: String = row.get(0).map_err(map_err)?;
        let json: String = row.get(1).map_err(map_err)?;
        let set: RuleSet = serde_json::from_str(&json)
            .map_err(|e| StoreError::Internal(format!("stored limit rules are invalid: {e}")))?;
        match kind.as_str() {
            "ip" => rules.ips = set,
            _ => rules.targets = set,
        }
    }
    Ok(rules)
}

pub(super) fn update(
    conn: &Connection,
    channel: Channel,
    update: &LimitRulesUpdate,
) -> Result<LimitRules, StoreError> {
    for (kind, set) in [
        (LimitKind::Ip, &update.ips),
        (LimitKind::Target, &update.targets),
    ] {
        let Some(set) = set else { continue };
        let json = serde_json::to_string(set)
            .map_err(|e| StoreError::Internal(format!("cannot encode limit rules: {e}")))?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO limit_rules (channel, kind, rules) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![channel.as_str(), kind_str(kind), json]))
        .map_err(map_err)?;
    }
    load(conn, channel)
}

/// Checks `rules` against the sends recorded for `key`.
pub(super) fn check(
    conn: &Connection,
    channel: Channel,
    kind: LimitKind,
    key: &str,
    rules: &RuleSet,
    now: Timestamp,
) -> Result<Option<LimitHit>, StoreError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let since = now.minus(rules.longest_window()).millis();
    let mut stmt = conn
        .prepare_cached(
            "SELECT at FROM sends WHERE channel = ?1 AND kind = ?2 AND key = ?3 AND at > ?4
             ORDER BY at DESC LIMIT ?5",
        )
        .map_err(map_err)?;
    let sends = stmt
        .query_map(
            params![
                channel.as_str(),
                kind_str(kind),
                key,
                since,
                rules.largest_rate()
            ],
            |row| row.get::<_, i64>(0).map(Timestamp::from_millis),
        )
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(map_err)?;
    Ok(rules.check(&sends, now))
}

pub(super) fn record_send(
    conn: &Connection,
    channel: Channel,
    kind: LimitKind,
    key: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO sends (channel, kind, key, at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![channel.as_str(), kind_str(kind), key, now.millis()]))
        .map_err(map_err)?;
    Ok(())
}

/// Drops sends older than the longest window of any rule in force (at least the
/// default's), since no rule can count them any more.
pub(super) fn purge_sends(
    conn: &Connection,
    now: Timestamp,
    purged: &mut Purged,
) -> Result<(), StoreError> {
    let mut keep = LimitRules::default().targets.longest_window();
    for channel in Channel::ALL {
        let rules = load(conn, channel)?;
        keep = keep
            .max(rules.ips.longest_window())
            .max(rules.targets.longest_window());
    }
    let cutoff = now.minus(keep.max(Duration::from_secs(60)));
    purged.delete(conn, "sends", "rowid", "at <= ?1", [cutoff.millis()])?;
    Ok(())
}
