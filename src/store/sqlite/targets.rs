//! One row per (channel, target) holds all that is kept of it: its live codes, its
//! recent sends, its round of wrong guesses since its last send, and its wrong-guess
//! budget. A create or a check reads the row once and writes it once: kept in tables of
//! their own (codes and their two indexes, sends and theirs, guesses, the budget's
//! counter) a create wrote ten B-tree entries and a check read four tables
//! (BENCHMARKS.md, finding 29).

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{PURGE_STEP, Purged, map_err};
use crate::clock::Timestamp;
use crate::domain::Channel;
use crate::domain::limits::{LimitHit, LimitRules, RuleSet};
use crate::domain::secret::CodeHash;
use crate::domain::verification::GuessState;
use crate::store::{Counter, StoreError};

/// A stored code: its keyed hash, then its expiry (milliseconds, big-endian).
const CODE_BYTES: usize = 32 + 8;
/// A stored send: its time (milliseconds, big-endian).
const SEND_BYTES: usize = 8;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TargetRow {
    /// Newest first, with their expiry (milliseconds); expired ones until the sweep.
    pub codes: Vec<(CodeHash, i64)>,
    /// Accepted sends (milliseconds), oldest first.
    pub sends: Vec<i64>,
    pub failures: u32,
    pub burned: bool,
    /// The round of guesses counts until then (the last of its codes' expiry).
    pub round_until: i64,
    /// Wrong guesses in the budget's window, which ends at `spent_until`.
    pub spent: u64,
    pub spent_until: i64,
    /// Until when anything in the row still counts: past it the sweep deletes the row.
    pub keep_until: i64,
    /// The row's `sweep_at` as read; `None` for a row not stored yet.
    stored_sweep_at: Option<i64>,
}

impl TargetRow {
    pub fn round(&self, now: Timestamp) -> GuessState {
        if self.round_until > now.millis() {
            GuessState {
                failures: self.failures,
                burned: self.burned,
            }
        } else {
            GuessState::default()
        }
    }

    pub fn end_round(&mut self) {
        (self.failures, self.burned, self.round_until) = (0, false, 0);
    }

    pub fn budget(&self, now: Timestamp) -> Counter {
        Counter::stored(Some(self.spent as i64), Some(self.spent_until), now)
    }

    /// Counts a wrong guess against the budget; a window that ended starts again, to
    /// end at `resets_at`.
    pub fn spend(&mut self, now: Timestamp, resets_at: Timestamp) {
        let running = self.budget(now);
        self.spent = running.count + 1;
        self.spent_until = running.resets_at.unwrap_or(resets_at).millis();
        self.keep_until = self.keep_until.max(self.spent_until);
    }

    pub fn end_budget(&mut self) {
        (self.spent, self.spent_until) = (0, 0);
    }

    /// The live codes' hashes, and when the last of them expires.
    pub fn live_codes(&self, now: Timestamp) -> (Vec<CodeHash>, i64) {
        let live = self.codes.iter().filter(|(_, ends)| *ends > now.millis());
        let latest = live.clone().map(|(_, ends)| *ends).max().unwrap_or(0);
        (live.map(|(hash, _)| *hash).collect(), latest)
    }

    /// The refusal of the strictest of `rules` that the row's sends break, if any.
    pub fn limit_hit(&self, rules: &RuleSet, now: Timestamp) -> Option<LimitHit> {
        let since = now.minus(rules.longest_window()).millis();
        let recent = self.sends.iter().rev().take_while(|at| **at > since);
        let newest_first: Vec<_> = recent.map(|at| Timestamp::from_millis(*at)).collect();
        rules.check(&newest_first, now)
    }

    /// Adds a new code, keeping at most `max_active` live ones (the newest).
    pub fn add_code(
        &mut self,
        hash: CodeHash,
        expires_at: Timestamp,
        max_active: u32,
        now: Timestamp,
    ) {
        let kept = self.codes.iter().filter(|(_, ends)| *ends > now.millis());
        let kept: Vec<_> = std::iter::once((hash, expires_at.millis()))
            .chain(kept.copied())
            .take(max_active.max(1) as usize)
            .collect();
        let latest = kept.iter().map(|(_, ends)| *ends).max().unwrap_or(0);
        self.codes = kept;
        self.keep_until = self.keep_until.max(latest);
    }

    /// Records a send at `now`; sends that no rule of `rules` (nor the default's) can
    /// count any more go.
    pub fn add_send(&mut self, rules: &LimitRules, now: Timestamp) {
        let keep = send_window(rules);
        let oldest = now.minus(keep).millis();
        self.sends.retain(|at| *at > oldest);
        // Kept in order even if the clock stepped back.
        let at = self.sends.partition_point(|at| *at <= now.millis());
        self.sends.insert(at, now.millis());
        self.keep_until = self.keep_until.max(now.plus(keep).millis());
    }

    /// When the sweep must next look at the row: once its codes expired (they are
    /// then erased), else once nothing in it counts.
    fn sweep_at(&self) -> i64 {
        match self.codes.iter().map(|(_, ends)| *ends).max() {
            Some(latest) => latest,
            None => self.keep_until,
        }
    }

    fn encode_codes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.codes.len() * CODE_BYTES);
        for (hash, ends) in &self.codes {
            bytes.extend_from_slice(&hash.0);
            bytes.extend_from_slice(&ends.to_be_bytes());
        }
        bytes
    }

    fn encode_sends(&self) -> Vec<u8> {
        self.sends.iter().flat_map(|at| at.to_be_bytes()).collect()
    }

    fn from_row(
        row: &rusqlite::Row<'_>,
        first: usize,
    ) -> rusqlite::Result<Result<Self, StoreError>> {
        let codes: Vec<u8> = row.get(first)?;
        let sends: Vec<u8> = row.get(first + 1)?;
        let (Some(codes), Some(sends)) = (decode_codes(&codes), decode_sends(&sends)) else {
            return Ok(Err(StoreError::Internal(
                "a stored target's codes or sends are damaged".into(),
            )));
        };
        Ok(Ok(TargetRow {
            codes,
            sends,
            failures: row.get(first + 2)?,
            burned: row.get(first + 3)?,
            round_until: row.get(first + 4)?,
            spent: row.get::<_, i64>(first + 5)?.max(0) as u64,
            spent_until: row.get(first + 6)?,
            keep_until: row.get(first + 7)?,
            stored_sweep_at: Some(row.get(first + 8)?),
        }))
    }
}

fn decode_codes(bytes: &[u8]) -> Option<Vec<(CodeHash, i64)>> {
    if !bytes.len().is_multiple_of(CODE_BYTES) {
        return None;
    }
    bytes
        .chunks_exact(CODE_BYTES)
        .map(|entry| {
            let (hash, ends) = entry.split_at(32);
            Some((
                CodeHash(hash.try_into().ok()?),
                i64::from_be_bytes(ends.try_into().ok()?),
            ))
        })
        .collect()
}

fn decode_sends(bytes: &[u8]) -> Option<Vec<i64>> {
    if !bytes.len().is_multiple_of(SEND_BYTES) {
        return None;
    }
    bytes
        .chunks_exact(SEND_BYTES)
        .map(|at| Some(i64::from_be_bytes(at.try_into().ok()?)))
        .collect()
}

/// How long sends are kept: the longest window of `rules`, and never less than the
/// default rule's, so that a rule added later finds the recent sends.
pub(super) fn send_window(rules: &LimitRules) -> Duration {
    LimitRules::default()
        .targets
        .longest_window()
        .max(rules.targets.longest_window())
}

/// The columns `TargetRow::from_row` reads, in its order; a macro so that every create
/// and check names its statement without formatting it again.
macro_rules! row_columns {
    () => {
        "codes, sends, failures, burned, round_until, spent, spent_until, keep_until, sweep_at"
    };
}

pub(super) fn load(
    conn: &Connection,
    channel: Channel,
    target: &str,
) -> Result<Option<TargetRow>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        row_columns!(),
        " FROM targets WHERE channel = ?1 AND target = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![channel.as_str(), target], |row| {
            TargetRow::from_row(row, 0)
        })
        .optional()
    })
    .map_err(map_err)?
    .transpose()
}

/// Writes the row: a new one is inserted, a stored one updated, its index entry only
/// when its `sweep_at` moved (an update that sets an indexed column rewrites its index
/// entry, changed or not).
pub(super) fn save(
    conn: &Connection,
    channel: &str,
    target: &str,
    row: &TargetRow,
) -> Result<(), StoreError> {
    write(conn, channel, target, row).map_err(map_err)
}

fn write(conn: &Connection, channel: &str, target: &str, row: &TargetRow) -> rusqlite::Result<()> {
    let sweep_at = row.sweep_at();
    let (codes, sends) = (row.encode_codes(), row.encode_sends());
    let values = params![
        channel,
        target,
        codes,
        sends,
        row.failures,
        row.burned,
        row.round_until,
        row.spent as i64,
        row.spent_until,
        row.keep_until,
        sweep_at,
    ];
    let (sql, values) = match row.stored_sweep_at {
        None => (
            "INSERT INTO targets (channel, target, codes, sends, failures, burned, round_until,
                                  spent, spent_until, keep_until, sweep_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            values,
        ),
        Some(stored) if stored == sweep_at => (
            "UPDATE targets SET codes = ?3, sends = ?4, failures = ?5, burned = ?6,
                 round_until = ?7, spent = ?8, spent_until = ?9, keep_until = ?10
             WHERE channel = ?1 AND target = ?2",
            &values[..10],
        ),
        Some(_) => (
            "UPDATE targets SET codes = ?3, sends = ?4, failures = ?5, burned = ?6,
                 round_until = ?7, spent = ?8, spent_until = ?9, keep_until = ?10,
                 sweep_at = ?11
             WHERE channel = ?1 AND target = ?2",
            values,
        ),
    };
    conn.prepare_cached(sql)?.execute(values)?;
    Ok(())
}

/// One step of the sweep: rows whose codes expired lose them (and their round, once it
/// ended), and rows in which nothing counts any more go.
pub(super) fn sweep(
    conn: &Connection,
    now: Timestamp,
    purged: &mut Purged,
) -> Result<(), StoreError> {
    let due = conn
        .prepare_cached(&format!(
            "SELECT channel, target, {} FROM targets WHERE sweep_at <= ?1 LIMIT {PURGE_STEP}",
            row_columns!()
        ))
        .and_then(|mut s| {
            s.query_map([now.millis()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    TargetRow::from_row(row, 2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(map_err)?;
    purged.more |= due.len() >= PURGE_STEP;
    for (channel, target, row) in due {
        // A damaged row cannot be read by anyone: it goes.
        let row = row.ok().filter(|row| row.keep_until > now.millis());
        let Some(mut row) = row else {
            conn.prepare_cached("DELETE FROM targets WHERE channel = ?1 AND target = ?2")
                .and_then(|mut s| s.execute(params![channel, target]))
                .map_err(map_err)?;
            purged.rows += 1;
            continue;
        };
        purged.rows += row.codes.len() as u64;
        row.codes.clear();
        if row.round_until <= now.millis() {
            row.end_round();
        }
        save(conn, &channel, &target, &row)?;
    }
    Ok(())
}

/// Moves what a database made before the targets table kept in tables of their own
/// (codes, guesses, a target's sends, its wrong-guess budget's counter) into its rows,
/// in one transaction, and drops those tables: codes sent before an upgrade still
/// verify, and limits and budgets still count.
pub(super) fn adopt_earlier_tables(conn: &Connection) -> rusqlite::Result<()> {
    let earlier: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'codes'",
        [],
        |r| r.get(0),
    )?;
    if earlier == 0 {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let mut rows: std::collections::BTreeMap<(String, String), TargetRow> = Default::default();
    {
        let mut codes =
            tx.prepare("SELECT channel, target, hash, expires_at FROM codes ORDER BY id DESC")?;
        let mut found = codes.query([])?;
        while let Some(r) = found.next()? {
            let hash: Vec<u8> = r.get(2)?;
            // A hash that is not 32 bytes matches no code: it is left behind.
            if let Ok(hash) = hash.try_into() {
                let row = rows.entry((r.get(0)?, r.get(1)?)).or_default();
                row.codes.push((CodeHash(hash), r.get(3)?));
            }
        }
        let mut guesses =
            tx.prepare("SELECT channel, target, failures, burned, expires_at FROM guesses")?;
        let mut found = guesses.query([])?;
        while let Some(r) = found.next()? {
            let row = rows.entry((r.get(0)?, r.get(1)?)).or_default();
            (row.failures, row.burned, row.round_until) = (r.get(2)?, r.get(3)?, r.get(4)?);
        }
        let mut sends =
            tx.prepare("SELECT channel, key, at FROM sends WHERE kind = 'target' ORDER BY at")?;
        let mut found = sends.query([])?;
        while let Some(r) = found.next()? {
            rows.entry((r.get(0)?, r.get(1)?))
                .or_default()
                .sends
                .push(r.get(2)?);
        }
        let mut budgets = tx.prepare(
            "SELECT channel, substr(key, 10), count, resets_at FROM quotas
             WHERE key LIKE 'failures:%'",
        )?;
        let mut found = budgets.query([])?;
        while let Some(r) = found.next()? {
            let row = rows.entry((r.get(0)?, r.get(1)?)).or_default();
            (row.spent, row.spent_until) = (r.get::<_, i64>(2)?.max(0) as u64, r.get(3)?);
        }
    }
    // Each channel's sends are kept as long as its rules count them (by `Channel::ALL`).
    let windows = Channel::ALL
        .map(|channel| send_window(&super::limits::load(&tx, channel).unwrap_or_default()));
    for ((channel, target), mut row) in rows {
        let window = channel.parse::<Channel>().map_or_else(
            |()| send_window(&LimitRules::default()),
            |channel| windows[channel as usize],
        );
        let last_send = row
            .sends
            .last()
            .map(|at| Timestamp::from_millis(*at).plus(window).millis());
        let latest_code = row.codes.iter().map(|(_, ends)| *ends).max();
        row.keep_until = [
            last_send,
            latest_code,
            Some(row.round_until),
            Some(row.spent_until),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        write(&tx, &channel, &target, &row)?;
    }
    tx.execute_batch(
        "DROP TABLE codes;
         DROP TABLE IF EXISTS guesses;
         DELETE FROM sends WHERE kind = 'target';
         DELETE FROM quotas WHERE key LIKE 'failures:%';",
    )?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);
    const MINUTE: Duration = Duration::from_secs(60);

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("schema.sql")).unwrap();
        conn
    }

    fn hash(byte: u8) -> CodeHash {
        CodeHash([byte; 32])
    }

    fn stored(conn: &Connection) -> Option<TargetRow> {
        load(conn, Channel::Sms, "77011234567").unwrap()
    }

    #[test]
    fn a_row_reads_back_as_it_was_written() {
        let conn = db();
        let mut row = TargetRow::default();
        row.add_code(hash(1), NOW.plus(MINUTE), 3, NOW);
        row.add_code(hash(2), NOW.plus(MINUTE * 2), 3, NOW);
        row.add_send(&LimitRules::default(), NOW);
        (row.failures, row.burned, row.round_until) = (2, false, NOW.plus(MINUTE).millis());
        row.spend(NOW, NOW.plus(MINUTE * 60 * 24));
        save(&conn, "sms", "77011234567", &row).unwrap();
        let read = stored(&conn).unwrap();
        assert_eq!(read.stored_sweep_at, Some(NOW.plus(MINUTE * 2).millis()));
        assert_eq!(
            TargetRow {
                stored_sweep_at: None,
                ..read
            },
            row
        );
        assert_eq!(row.codes[0].0, hash(2), "newest first");
        assert_eq!(row.keep_until, NOW.plus(MINUTE * 60 * 24).millis());
    }

    #[test]
    fn a_new_code_keeps_the_newest_live_ones_up_to_the_most_active() {
        let mut row = TargetRow::default();
        row.add_code(hash(1), NOW.plus(MINUTE), 2, NOW);
        row.add_code(hash(2), NOW.plus(MINUTE), 2, NOW);
        row.add_code(hash(3), NOW.plus(MINUTE), 2, NOW);
        let (live, _) = row.live_codes(NOW);
        assert_eq!(live, vec![hash(3), hash(2)]);
        // An expired code makes room without counting.
        let later = NOW.plus(MINUTE * 2);
        row.add_code(hash(4), later.plus(MINUTE), 2, later);
        assert_eq!(
            row.live_codes(later),
            (vec![hash(4)], later.plus(MINUTE).millis())
        );
    }

    #[test]
    fn the_sweep_erases_expired_codes_then_the_row_once_nothing_in_it_counts() {
        let conn = db();
        let mut row = TargetRow::default();
        row.add_code(hash(1), NOW.plus(MINUTE), 3, NOW);
        row.add_send(&LimitRules::default(), NOW);
        save(&conn, "sms", "77011234567", &row).unwrap();

        let mut purged = Purged::default();
        sweep(&conn, NOW.plus(MINUTE / 2), &mut purged).unwrap();
        assert_eq!(purged.rows, 0, "nothing expired yet");
        sweep(&conn, NOW.plus(MINUTE), &mut purged).unwrap();
        assert_eq!(purged.rows, 1, "the code went");
        let kept = stored(&conn).unwrap();
        assert!(kept.codes.is_empty());
        assert_eq!(kept.sends, vec![NOW.millis()], "the send still counts");
        // The default rule counts sends for 10 minutes.
        sweep(&conn, NOW.plus(MINUTE * 9), &mut purged).unwrap();
        assert!(stored(&conn).is_some());
        sweep(&conn, NOW.plus(MINUTE * 10), &mut purged).unwrap();
        assert_eq!((stored(&conn), purged.rows), (None, 2));
    }

    #[test]
    fn a_damaged_row_is_refused_and_swept_away() {
        let conn = db();
        conn.execute(
            "INSERT INTO targets VALUES ('sms', '77011234567', x'01', x'', 0, 0, 0, 0, 0, ?1, ?1)",
            [NOW.millis()],
        )
        .unwrap();
        assert!(matches!(
            load(&conn, Channel::Sms, "77011234567"),
            Err(StoreError::Internal(_))
        ));
        let mut purged = Purged::default();
        sweep(&conn, NOW, &mut purged).unwrap();
        assert_eq!(stored(&conn), None);
    }
}
