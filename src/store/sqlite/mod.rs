//! The embedded store: one SQLite file in WAL mode, written by one thread with group
//! commit (see `writer`). Everything a request decides happens inside one transaction.

mod codes;
mod deliveries;
mod idempotency;
mod limits;
mod links;
mod quotas;
mod targets;
mod writer;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode};

use self::writer::{Durability, Writer};
use super::{
    CodeCheck, Counter, CreateOutcome, DeliveryStatus, EndedJobs, IdempotencyBegin,
    LinkCodeOutcome, LinkLookup, LinkLookupOutcome, NewCode, NewLinkCode, OutboxStats, Quota,
    QuotaOutcome, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, DeliveryId, DeliveryJob};
use crate::domain::Channel;
use crate::domain::limits::{LimitRules, LimitRulesUpdate};
use crate::domain::verification::CheckOutcome;

/// How long delivery jobs stay visible at `GET /deliveries/{id}` after their code
/// expired (the Redis store keeps them as long).
const FINISHED_DELIVERY_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is in use by another otpd process (only one may use an SQLite store)")]
    Locked { path: String },
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

pub struct SqliteStore {
    writer: Writer,
    // Held for the life of the store: a second process on the same file would deliver
    // jobs twice, since leases assume one owner.
    _lock: File,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let lock_path = PathBuf::from(format!("{display}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OpenError::Io {
                path: lock_path.display().to_string(),
                source,
            })?;
        lock.try_lock().map_err(|_| OpenError::Locked {
            path: display.clone(),
        })?;
        let sqlite_err = |source| OpenError::Sqlite {
            path: display.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite_err)?;
        // A short busy timeout: otpd is the only writer (see the lock file), so a lock
        // held elsewhere is an operator's session, and callers should get a prompt 503
        // rather than hang. secure_delete zeroes erased messages (they held codes).
        // temp_store: each operation runs in a savepoint, whose journal keeps the pages it
        // changes; in a temporary file that was ~40 KB written per create (profiled, see
        // BENCHMARKS.md), and it would put pages holding messages on disk a second time.
        conn.execute_batch(
            "PRAGMA busy_timeout = 1000;
             PRAGMA secure_delete = ON;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(sqlite_err)?;
        let journal: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sqlite_err)?;
        // Acknowledged means on disk, even after a power cut. In WAL mode the writer
        // commits without waiting for the disk and a second thread syncs the log before
        // anyone is answered (see writer.rs), so one batch runs while the last one syncs.
        // Where WAL is refused (some network file systems), SQLite syncs every commit.
        let durability = if journal.eq_ignore_ascii_case("wal") {
            conn.execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(sqlite_err)?;
            let wal_path = format!("{display}-wal");
            let wal = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&wal_path)
                .map_err(|source| OpenError::Io {
                    path: wal_path,
                    source,
                })?;
            Durability::SyncLog(wal)
        } else {
            conn.execute_batch("PRAGMA synchronous = FULL")
                .map_err(sqlite_err)?;
            Durability::SqliteSyncs
        };
        migrate(&conn).map_err(sqlite_err)?;
        // rusqlite keeps 16 prepared statements by default; otpd runs about 40 distinct
        // ones, so under load they were evicted and parsed again and again.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Without the query planner stability guarantee, SQLite prepares a statement again
        // each time a `LIMIT ?` parameter is bound (so the plan may use its value): that was
        // a third of the writer's time on creates.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(sqlite_err)?;
        // Jobs a previous process was sending when it died belong to nobody now.
        deliveries::requeue_orphans(&conn).map_err(sqlite_err)?;
        let writer = Writer::start(conn, durability).map_err(|source| OpenError::Io {
            path: display,
            source,
        })?;
        Ok(SqliteStore {
            writer,
            _lock: lock,
        })
    }
}

const STATEMENT_CACHE: usize = 128;

/// Rows one purge statement deletes at most. A purge runs in steps, each its own writer
/// operation, so that requests are served between them: one `DELETE` of a minute's send
/// records (900,000 rows at 15,000 creates/s) held the writer, and every request, for
/// seconds (the benchmark's p99 with a million codes held). A step of 2,000 rows still
/// held a batch for over 10 ms (each row is zeroed by `secure_delete` and leaves two
/// indexes): the create p99 was 26 ms while the seed's records were purged. At 500, the
/// creates right after a restart that found 100,000 expired codes read 15-16 ms, at 100
/// 8.5-8.7 (BENCHMARKS.md, finding 37).
const PURGE_STEP: usize = 100;

/// What one purge step removed, and whether a statement stopped at its step.
#[derive(Debug, Default)]
struct Purged {
    rows: u64,
    more: bool,
}

impl Purged {
    /// Deletes at most `PURGE_STEP` rows of `table` matching `condition`, and counts
    /// them; `key` is the table's key (a column, or columns such as `channel, target`),
    /// found through the index the condition uses.
    fn delete(
        &mut self,
        conn: &Connection,
        table: &str,
        key: &str,
        condition: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE ({key}) IN
                 (SELECT {key} FROM {table} WHERE {condition} LIMIT {PURGE_STEP})"
        );
        let deleted = conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params))
            .map_err(map_err)?;
        self.rows += deleted as u64;
        self.more |= deleted >= PURGE_STEP;
        Ok(())
    }
}

/// Creates the schema, and adds what later versions added to a database made before.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let existed = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    if existed {
        if !has_column("deliveries", "provider_message_id")? {
            conn.execute_batch("ALTER TABLE deliveries ADD COLUMN provider_message_id TEXT")?;
        }
        if !has_column("deliveries", "history")? {
            conn.execute_batch(
                "ALTER TABLE deliveries ADD COLUMN history TEXT NOT NULL DEFAULT '[]'",
            )?;
        }
    }
    conn.execute_batch(include_str!("schema.sql"))?;
    targets::adopt_earlier_tables(conn)
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_code(&self, code: NewCode) -> Result<CreateOutcome, StoreError> {
        self.writer
            .call(move |conn| codes::create(conn, &code))
            .await
    }

    async fn check_code(&self, check: CodeCheck) -> Result<CheckOutcome, StoreError> {
        self.writer
            .call(move |conn| codes::check(conn, &check))
            .await
    }

    async fn limit_rules(&self, channel: Channel) -> Result<LimitRules, StoreError> {
        self.writer
            .read(move |conn| limits::load(conn, channel))
            .await
    }

    async fn update_limit_rules(
        &self,
        channel: Channel,
        update: LimitRulesUpdate,
    ) -> Result<LimitRules, StoreError> {
        self.writer
            .call(move |conn| limits::update(conn, channel, &update))
            .await
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: Timestamp,
        lease_until: Timestamp,
        max: usize,
    ) -> Result<(Vec<DeliveryJob>, EndedJobs), StoreError> {
        self.writer
            .call(move |conn| deliveries::claim(conn, channel, now, lease_until, max))
            .await
    }

    async fn next_delivery_due(&self, channel: Channel) -> Result<Option<Timestamp>, StoreError> {
        self.writer
            .read(move |conn| deliveries::next_due(conn, channel))
            .await
    }

    async fn finish_attempt(
        &self,
        _channel: Channel,
        id: DeliveryId,
        report: AttemptReport,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.writer
            .call(move |conn| deliveries::finish(conn, id, &report, now))
            .await
    }

    async fn create_link_code(&self, code: NewLinkCode) -> Result<LinkCodeOutcome, StoreError> {
        self.writer
            .call(move |conn| links::create(conn, &code))
            .await
    }

    async fn record_update(&self, update_id: i64, now: Timestamp) -> Result<bool, StoreError> {
        self.writer
            .call(move |conn| links::record_update(conn, update_id, now))
            .await
    }

    async fn take_link_code(&self, lookup: LinkLookup) -> Result<LinkLookupOutcome, StoreError> {
        self.writer
            .call(move |conn| links::take(conn, &lookup))
            .await
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryStatus>, StoreError> {
        self.writer
            .call(move |conn| deliveries::status(conn, id))
            .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<(u64, EndedJobs), StoreError> {
        let (mut rows, mut ended) = (0, EndedJobs::default());
        loop {
            // One step per writer operation, so that requests are served between steps.
            let (purged, step_ended) = self
                .writer
                .call(move |conn| {
                    let (mut purged, mut ended) = (Purged::default(), EndedJobs::default());
                    targets::sweep(conn, now, &mut purged)?;
                    limits::purge_sends(conn, now, &mut purged)?;
                    links::purge(conn, now, &mut purged)?;
                    let quotas = "resets_at <= ?1";
                    purged.delete(conn, "quotas", "channel, key", quotas, [now.millis()])?;
                    let keys = "expires_at <= ?1";
                    purged.delete(conn, "idempotency", "channel, key", keys, [now.millis()])?;
                    let before = now.minus(FINISHED_DELIVERY_RETENTION);
                    deliveries::purge(conn, now, before, &mut ended, &mut purged)?;
                    Ok((purged, ended))
                })
                .await?;
            rows += purged.rows;
            ended.add(&step_ended);
            if !purged.more {
                return Ok((rows, ended));
            }
        }
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, StoreError> {
        self.writer.read(deliveries::stats).await
    }

    async fn take_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<QuotaOutcome, StoreError> {
        let quotas = quotas.to_vec();
        self.writer
            .call(move |conn| quotas::take(conn, channel, &quotas, now))
            .await
    }

    async fn return_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let quotas = quotas.to_vec();
        self.writer
            .call(move |conn| quotas::give_back(conn, channel, &quotas, now))
            .await
    }

    async fn counters(
        &self,
        channel: Channel,
        keys: &[String],
        now: Timestamp,
    ) -> Result<Vec<Counter>, StoreError> {
        let keys = keys.to_vec();
        self.writer
            .read(move |conn| {
                keys.iter()
                    .map(|key| quotas::counter(conn, channel, key, now))
                    .collect()
            })
            .await
    }

    async fn begin_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
        pending_until: Timestamp,
    ) -> Result<IdempotencyBegin, StoreError> {
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        self.writer
            .call(move |conn| {
                idempotency::begin(conn, channel, &key, &fingerprint, now, pending_until)
            })
            .await
    }

    async fn finish_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        answer: Option<String>,
        keep_until: Timestamp,
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        self.writer
            .call(move |conn| {
                idempotency::finish(
                    conn,
                    channel,
                    &key,
                    &fingerprint,
                    answer.as_deref(),
                    keep_until,
                )
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.writer
            .call(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn close(&self) {
        self.writer.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a directory of its own, removed with the returned guard.
    fn new_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("otp.db")).unwrap();
        (dir, store)
    }

    /// Jobs queued for `sms` whose code expired at 1 s, and one whose code lives on:
    /// that one's id.
    async fn lapsed_jobs(store: &SqliteStore, lapsed: usize) -> String {
        let job = |expires_at| NewCode::queued_for_test("+77010000000", expires_at);
        let live = job(i64::MAX);
        let live_id = live.delivery_id.to_string();
        let jobs: Vec<NewCode> = (0..lapsed).map(|_| job(1_000)).chain([live]).collect();
        store
            .writer
            .call(move |conn| {
                jobs.iter()
                    .try_for_each(|code| deliveries::enqueue(conn, code))
            })
            .await
            .unwrap();
        live_id
    }

    #[tokio::test]
    async fn a_claim_ends_lapsed_jobs_a_step_at_a_time_and_never_takes_one() {
        let (_dir, store) = new_store();
        let live = lapsed_jobs(&store, PURGE_STEP + 7).await;
        let (now, lease) = (
            Timestamp::from_millis(2_000),
            Timestamp::from_millis(62_000),
        );
        let sms = Channel::Sms as usize;

        let (jobs, ended) = store
            .claim_deliveries(Channel::Sms, now, lease, 10)
            .await
            .unwrap();
        assert!(
            jobs.is_empty(),
            "lapsed jobs are left: nothing is claimed yet"
        );
        assert_eq!(ended.expired[sms], PURGE_STEP as u64);

        let (jobs, ended) = store
            .claim_deliveries(Channel::Sms, now, lease, 10)
            .await
            .unwrap();
        assert_eq!(ended.expired[sms], 7);
        let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        assert_eq!(ids, [live], "only the live job is claimed");
        store.close().await;
    }

    #[tokio::test]
    async fn a_purge_ends_every_lapsed_job_in_steps() {
        let (_dir, store) = new_store();
        let lapsed = PURGE_STEP * 2 + 7;
        lapsed_jobs(&store, lapsed).await;
        let (_, ended) = store
            .purge_expired(Timestamp::from_millis(2_000))
            .await
            .unwrap();
        assert_eq!(ended.expired[Channel::Sms as usize], lapsed as u64);
        store.close().await;
    }

    #[tokio::test]
    async fn a_purge_larger_than_a_step_runs_in_steps_until_nothing_is_left() {
        let (_dir, store) = new_store();
        let rows = PURGE_STEP * 2 + 7;
        store
            .writer
            .call(move |conn| {
                for key in 0..rows {
                    conn.execute(
                        "INSERT INTO sends (channel, kind, key, at) VALUES ('sms', 'target', ?1, 0)",
                        [key.to_string()],
                    )
                    .map_err(map_err)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let (purged, _) = store
            .purge_expired(Timestamp::from_millis(1_790_000_000_000))
            .await
            .unwrap();
        assert_eq!(purged, rows as u64);
        let left: i64 = store
            .writer
            .read(|c| {
                c.query_row("SELECT count(*) FROM sends", [], |r| r.get(0))
                    .map_err(map_err)
            })
            .await
            .unwrap();
        assert_eq!(left, 0);
        store.close().await;
    }
}
