-- All that is kept of one (channel, target), read once and written once by a create or
-- a check (see targets.rs): its live codes (only their keyed hashes), its recent sends,
-- its round of wrong guesses since its last send, and its wrong-guess budget.
-- codes: newest first, each a 32-byte hash and its expiry (ms, 8 bytes big-endian);
-- sends: accepted sends' times, oldest first, 8 bytes each. The sweep erases a row's
-- codes once they expired, and the row once nothing in it counts (keep_until).
CREATE TABLE IF NOT EXISTS targets (
    channel     TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    codes       BLOB    NOT NULL,
    sends       BLOB    NOT NULL,
    failures    INTEGER NOT NULL,
    burned      INTEGER NOT NULL,
    round_until INTEGER NOT NULL,
    spent       INTEGER NOT NULL,
    spent_until INTEGER NOT NULL,
    keep_until  INTEGER NOT NULL,
    sweep_at    INTEGER NOT NULL,
    PRIMARY KEY (channel, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS targets_by_sweep ON targets (sweep_at);

-- Accepted sends per ip (and failed lookups), for the sliding-window limits; a target's
-- sends are kept in its row.
CREATE TABLE IF NOT EXISTS sends (
    channel TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    key     TEXT    NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_by_key ON sends (channel, kind, key, at);
CREATE INDEX IF NOT EXISTS sends_by_time ON sends (at);

-- Limit rules set at run time; a missing row means the default.
CREATE TABLE IF NOT EXISTS limit_rules (
    channel TEXT NOT NULL,
    kind    TEXT NOT NULL,
    rules   TEXT NOT NULL,
    PRIMARY KEY (channel, kind)
) WITHOUT ROWID;

-- The delivery outbox. payload holds the message (and so the code) until the job ends.
CREATE TABLE IF NOT EXISTS deliveries (
    id              TEXT    PRIMARY KEY,
    channel         TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    payload         TEXT,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    provider        TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    -- Added after the first release; see migrate() for databases made before.
    provider_message_id TEXT,
    history         TEXT    NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
-- The indexes a claim reads hold only unfinished jobs, each in the index of its state,
-- so that a job leaves them when it ends instead of moving within them: a job handed to
-- its worker at once is written into one of them and erased from it, not moved twice in
-- two. A query uses a partial index only when its WHERE names the index's state
-- literally (state = 'queued' there, never state IN (...) or a parameter).
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_due_by_channel;
DROP INDEX IF EXISTS deliveries_expiring_by_channel;
CREATE INDEX IF NOT EXISTS deliveries_queued
    ON deliveries (channel, next_attempt_at) WHERE state = 'queued';
-- Every claim looks for queued jobs whose code expired: without this it would read the
-- whole backlog each time.
CREATE INDEX IF NOT EXISTS deliveries_queued_expiring
    ON deliveries (channel, expires_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS deliveries_sending
    ON deliveries (channel, lease_until) WHERE state = 'sending';
-- The purge, of ended jobs only (it first ends those whose code expired unsent): a job
-- enters this index when it ends, so a create writes only one of the three above.
CREATE INDEX IF NOT EXISTS deliveries_ended
    ON deliveries (expires_at) WHERE state NOT IN ('queued', 'sending');

-- Codes the Telegram bot handed out, found by the code alone (GET /target): the hash is
-- of the code only, so it is unique among live codes.
CREATE TABLE IF NOT EXISTS link_codes (
    hash        BLOB    PRIMARY KEY,
    chat_id     TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    delivery_id TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS link_codes_by_chat ON link_codes (chat_id);

-- Telegram updates already handled: a webhook call Telegram repeats, or updates polled
-- again after a restart, are not handled twice. The newest is where polling resumes.
CREATE TABLE IF NOT EXISTS telegram_updates (
    update_id  INTEGER PRIMARY KEY,
    handled_at INTEGER NOT NULL
);

-- Quotas and counters: daily caps, resend cooldowns, wrong-guess budgets. A row counts
-- from its first use until resets_at; past that it counts as zero.
CREATE TABLE IF NOT EXISTS quotas (
    channel   TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    count     INTEGER NOT NULL,
    resets_at INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quotas_by_reset ON quotas (resets_at);

-- Creates made with an Idempotency-Key: the request's fingerprint, and its answer once
-- it has one (NULL while it runs). Kept until expires_at.
CREATE TABLE IF NOT EXISTS idempotency (
    channel     TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    answer      TEXT,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at);
