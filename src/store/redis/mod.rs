//! The shared store: Redis (or Valkey), for many stateless replicas. Every operation
//! that reads and then writes is one Lua script, so replicas never interleave inside a
//! decision. All keys of a channel share the hash tag `{prefix:channel}`, so each script
//! touches one cluster slot. Keys that hold codes, counters or jobs expire by
//! themselves. Delivery jobs are a stream per channel with a consumer group.

mod batch;
mod conn;

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use redis::{FromRedisValue, Script, Value};

use self::batch::Batcher;
use self::conn::Conn;
use super::outbox::{AttemptEnd, Payload, StoredTry};
use super::{
    CodeCheck, Counter, CreateOutcome, DeliveryStatus, EndedJobs, IdempotencyBegin,
    LinkCodeOutcome, LinkLookup, LinkLookupOutcome, NewCode, NewLinkCode, OutboxStats, Quota,
    QuotaOutcome, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::delivery::{AttemptReport, DeliveryId, DeliveryJob, DeliveryState};
use crate::domain::Channel;
use crate::domain::limits::{LimitHit, LimitKind, LimitRules, LimitRulesUpdate, Rule, RuleSet};
use crate::domain::verification::CheckOutcome;

/// How long finished jobs stay visible at `GET /deliveries/{id}`.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How many lapsed jobs one call of the claim script ends at most.
const CLAIM_STEP: usize = 100;
/// Telegram gives up redelivering an update after a day.
const HANDLED_UPDATES_KEPT: Duration = Duration::from_secs(24 * 3600);

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lib.lua"), "\n", include_str!($file)))
    };
}

struct Scripts {
    rules: Script,
    claim: Script,
    finish: Script,
    expire: Script,
    link_create: Script,
    link_take: Script,
    quota_take: Script,
    quota_return: Script,
    idem_begin: Script,
    idem_finish: Script,
}

pub struct RedisStore {
    conn: Conn,
    scripts: Scripts,
    /// Creates and checks, batched per channel (a channel's keys share one slot).
    creates: [Batcher; Channel::ALL.len()],
    checks: [Batcher; Channel::ALL.len()],
    prefix: String,
    /// This process's name in the delivery consumer groups.
    consumer: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Redis ({0})")]
pub struct RedisOpenError(String);

impl RedisStore {
    /// Connects (to one server, or to a cluster through its seed nodes) and checks the
    /// server answers.
    pub async fn open(
        nodes: &[String],
        cluster: bool,
        prefix: &str,
    ) -> Result<Self, RedisOpenError> {
        let conn = Conn::open(nodes, cluster).await.map_err(RedisOpenError)?;
        let creates = Channel::ALL.map(|_| Batcher::start(conn.clone(), script!("create.lua")));
        let checks = Channel::ALL.map(|_| Batcher::start(conn.clone(), script!("check.lua")));
        let store = RedisStore {
            conn,
            scripts: Scripts {
                rules: script!("rules.lua"),
                claim: script!("claim.lua"),
                finish: script!("finish.lua"),
                expire: script!("expire.lua"),
                link_create: script!("link_create.lua"),
                link_take: script!("link_take.lua"),
                quota_take: script!("quota_take.lua"),
                quota_return: script!("quota_return.lua"),
                idem_begin: script!("idem_begin.lua"),
                idem_finish: script!("idem_finish.lua"),
            },
            creates,
            checks,
            prefix: prefix.to_owned(),
            consumer: format!("otpd-{:016x}", rand::thread_rng().r#gen::<u64>()),
        };
        store
            .ping()
            .await
            .map_err(|e| RedisOpenError(e.to_string()))?;
        store.warn_about_eviction().await;
        Ok(store)
    }

    /// `{prefix:channel}`: the hash tag every key of a channel starts with.
    fn tag(&self, channel: Channel) -> String {
        format!("{{{}:{}}}", self.prefix, channel)
    }

    fn key(&self, channel: Channel, rest: &str) -> String {
        format!("{}:{rest}", self.tag(channel))
    }

    /// The hash holding all that is kept of a target: its live codes, its recent sends,
    /// its round of guesses and its wrong-guess budget (create.lua).
    fn target_key(&self, channel: Channel, target: &str) -> String {
        format!("{}:target:{target}", self.tag(channel))
    }

    fn quota_key(&self, channel: Channel, key: &str) -> String {
        format!("{}:quota:{key}", self.tag(channel))
    }
}

fn kind_str(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Ip => "ip",
        LimitKind::Target => "target",
        LimitKind::FailedLookup => "failed_lookup",
    }
}

/// Unique per send, so two sends in the same millisecond are both counted.
fn send_member(now: Timestamp) -> String {
    format!(
        "{}:{:016x}",
        now.millis(),
        rand::thread_rng().r#gen::<u64>()
    )
}

fn rules_json(set: &RuleSet) -> Result<String, StoreError> {
    serde_json::to_string(set)
        .map_err(|e| StoreError::Internal(format!("cannot encode limit rules: {e}")))
}

fn parse_rules(raw: Option<String>, default: RuleSet) -> Result<RuleSet, StoreError> {
    match raw {
        None => Ok(default),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StoreError::Internal(format!("stored limit rules are invalid: {e}"))),
    }
}

/// The stored (ip, target) rules, the defaults where none are stored.
fn rules_in_force(
    (ips, targets): (Option<String>, Option<String>),
) -> Result<LimitRules, StoreError> {
    let defaults = LimitRules::default();
    Ok(LimitRules {
        ips: parse_rules(ips, defaults.ips)?,
        targets: parse_rules(targets, defaults.targets)?,
    })
}

/// `{'limited', minutes, rate, retry_after_secs}` (from `at` on) into a hit.
fn limit_hit(fields: &[Value], at: usize) -> Result<LimitHit, StoreError> {
    let rule =
        Rule::new(number(fields, at)?, number(fields, at + 1)?).map_err(StoreError::Internal)?;
    Ok(LimitHit {
        rule,
        retry_after_secs: number(fields, at + 2)?.max(1) as u64,
    })
}

fn number(fields: &[Value], i: usize) -> Result<i64, StoreError> {
    parsed(fields.get(i))
}

fn text(fields: &[Value], i: usize) -> Result<String, StoreError> {
    parsed(fields.get(i))
}

/// A script's answer (or a field of it) as `T`.
fn parsed<T: FromRedisValue>(value: Option<&Value>) -> Result<T, StoreError> {
    value
        .and_then(|v| T::from_redis_value(v).ok())
        .ok_or_else(|| StoreError::Internal("a malformed answer from Redis".into()))
}

/// The default target rules as the scripts take them, when none are stored: encoded
/// once, not at every create.
fn default_target_rules() -> Result<&'static str, StoreError> {
    static ENCODED: LazyLock<Result<String, StoreError>> =
        LazyLock::new(|| rules_json(&LimitRules::default().targets));
    ENCODED.as_deref().map_err(Clone::clone)
}

#[async_trait]
impl Store for RedisStore {
    async fn create_code(&self, code: NewCode) -> Result<CreateOutcome, StoreError> {
        let ch = code.channel;
        let ip = code.ip.map(|ip| ip.to_string()).unwrap_or_default();
        let id = code.delivery_id.to_string();
        let keys = vec![
            self.key(ch, "rules"),
            self.key(ch, &format!("sends:ip:{ip}")),
            self.target_key(ch, &code.target),
            self.key(ch, "queue"),
            self.key(ch, &format!("job:{id}")),
        ];
        let args = vec![
            code.now.millis().to_string(),
            code.expires_at.millis().to_string(),
            code.max_active.to_string(),
            hex::encode(code.hash.0),
            if code.ip.is_some() { "1" } else { "0" }.to_owned(),
            // Only an IP's sends are a sorted set, whose members must be unique.
            code.ip.map(|_| send_member(code.now)).unwrap_or_default(),
            default_target_rules()?.to_owned(),
            id,
            code.target.clone(),
            Payload::encode(&code)?,
            RETENTION.as_millis().to_string(),
            code.lease_until
                .map(|t| t.millis().to_string())
                .unwrap_or_default(),
            // The budget is kept in the target's hash (create.lua), not under its key.
            code.failure_budget
                .as_ref()
                .map(|budget| budget.limit.to_string())
                .unwrap_or_default(),
        ];
        let answer = self.creates[ch as usize].call(keys, args).await?;
        let answer: Vec<Value> = parsed(Some(&answer))?;
        match text(&answer, 0)?.as_str() {
            "created" => Ok(CreateOutcome::Created),
            "failure_budget" => Ok(CreateOutcome::FailureBudgetSpent {
                resets_at: Timestamp::from_millis(number(&answer, 1)?),
            }),
            "ip_required" => Ok(CreateOutcome::IpRequired),
            "limited" => {
                let kind = match text(&answer, 1)?.as_str() {
                    "ip" => LimitKind::Ip,
                    _ => LimitKind::Target,
                };
                Ok(CreateOutcome::Limited(kind, limit_hit(&answer, 2)?))
            }
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn check_code(&self, check: CodeCheck) -> Result<CheckOutcome, StoreError> {
        let ch = check.channel;
        // The budget is kept in the target's hash (check.lua), not under its key.
        let (budget, resets_at) = match &check.failure_budget {
            Some(budget) => (
                budget.limit.to_string(),
                budget.resets_at.millis().to_string(),
            ),
            None => Default::default(),
        };
        let args = vec![
            check.now.millis().to_string(),
            hex::encode(check.hash.0),
            check.max_attempts.to_string(),
            budget,
            resets_at,
        ];
        let keys = vec![self.target_key(ch, &check.target)];
        let answer = self.checks[ch as usize].call(keys, args).await?;
        let answer: String = parsed(Some(&answer))?;
        match answer.as_str() {
            "verified" => Ok(CheckOutcome::Verified),
            "invalid_password" => Ok(CheckOutcome::InvalidPassword),
            "attempts_exceeded" => Ok(CheckOutcome::AttemptsExceeded),
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn limit_rules(&self, channel: Channel) -> Result<LimitRules, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(channel, "rules")).arg("ip").arg("target");
        rules_in_force(self.conn.query(&cmd).await?)
    }

    async fn update_limit_rules(
        &self,
        channel: Channel,
        update: LimitRulesUpdate,
    ) -> Result<LimitRules, StoreError> {
        let json = |set: &Option<RuleSet>| set.as_ref().map(rules_json).transpose();
        let mut call = self.scripts.rules.prepare_invoke();
        call.key(self.key(channel, "rules"))
            .arg(json(&update.ips)?.unwrap_or_default())
            .arg(json(&update.targets)?.unwrap_or_default());
        rules_in_force(self.conn.invoke(&mut call).await?)
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: Timestamp,
        lease_until: Timestamp,
        max: usize,
    ) -> Result<(Vec<DeliveryJob>, EndedJobs), StoreError> {
        let mut ended = EndedJobs::default();
        let mut rows = Vec::new();
        // Each call ends at most `CLAIM_STEP` lapsed jobs, so that Redis answers others
        // between the calls while a backlog is ended (BENCHMARKS.md, finding 38).
        while rows.len() < max {
            let mut call = self.scripts.claim.prepare_invoke();
            call.key(self.key(channel, "queue"))
                .key(self.key(channel, "delayed"))
                .arg(now.millis())
                .arg(lease_until.millis())
                .arg(max - rows.len())
                .arg(&self.consumer)
                .arg(self.tag(channel))
                .arg(RETENTION.as_millis() as u64)
                .arg(CLAIM_STEP);
            type Row = (String, String, String, u32, i64, i64);
            let (taken, expired, failed, more): (Vec<Row>, u64, u64, bool) =
                self.conn.invoke(&mut call).await?;
            ended.expired[channel as usize] += expired;
            ended.failed[channel as usize] += failed;
            rows.extend(taken);
            if !more {
                break;
            }
        }
        let mut jobs = Vec::with_capacity(rows.len());
        for (id, target, payload, attempts, expires_at, created_at) in rows {
            let parsed = id
                .parse::<DeliveryId>()
                .map_err(|()| StoreError::Internal(format!("bad delivery id {id:?}")))
                .and_then(|delivery| Ok((delivery, Payload::decode(Some(&payload), &id)?)));
            match parsed {
                Ok((delivery, (content, code))) => jobs.push(DeliveryJob {
                    id: delivery,
                    channel,
                    target,
                    content,
                    code,
                    attempts,
                    expires_at: Timestamp::from_millis(expires_at),
                    created_at: Timestamp::from_millis(created_at),
                }),
                Err(e) => {
                    ended.failed[channel as usize] += 1;
                    // One damaged job must not stop its channel: it fails alone.
                    tracing::error!(error = %e, "a delivery job cannot be read; marking it failed");
                    let report = AttemptReport {
                        attempt: attempts,
                        result: crate::delivery::AttemptResult::Failed {
                            error: "the stored job could not be read".into(),
                        },
                        tries: Vec::new(),
                    };
                    // The others in hand are still returned (and sent).
                    if let Ok(delivery) = id.parse::<DeliveryId>()
                        && let Err(e) = self.finish_in(channel, delivery, &report, now).await
                    {
                        tracing::warn!(error = %e, "cannot mark an unreadable job failed");
                    }
                }
            }
        }
        Ok((jobs, ended))
    }

    async fn next_delivery_due(&self, channel: Channel) -> Result<Option<Timestamp>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.key(channel, "delayed"))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        let first: Vec<(String, f64)> = self.conn.query(&cmd).await?;
        Ok(first
            .first()
            .map(|(_, at)| Timestamp::from_millis(*at as i64)))
    }

    async fn finish_attempt(
        &self,
        channel: Channel,
        id: DeliveryId,
        report: AttemptReport,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.finish_in(channel, id, &report, now).await
    }

    async fn create_link_code(&self, link: NewLinkCode) -> Result<LinkCodeOutcome, StoreError> {
        let ch = Channel::Telegram;
        let code = &link.code;
        let id = code.delivery_id.to_string();
        let hash = hex::encode(code.hash.0);
        let mut call = self.scripts.link_create.prepare_invoke();
        call.key(self.key(ch, &format!("update:{}", link.update_id.unwrap_or(0))))
            .key(self.key(ch, "rules"))
            .key(self.target_key(ch, &code.target))
            .key(self.key(ch, &format!("link:{hash}")))
            .key(self.key(ch, &format!("linkchat:{}", code.target)))
            .key(self.key(ch, "queue"))
            .key(self.key(ch, &format!("job:{id}")))
            .arg(code.now.millis())
            .arg(code.expires_at.millis())
            .arg(&hash)
            .arg(&code.target)
            .arg(default_target_rules()?)
            .arg(&id)
            .arg(Payload::encode(code)?)
            .arg(RETENTION.as_millis() as u64)
            .arg(HANDLED_UPDATES_KEPT.as_millis() as u64)
            .arg(self.tag(ch))
            .arg(if link.update_id.is_some() { "1" } else { "0" });
        let answer: Vec<Value> = self.conn.invoke(&mut call).await?;
        match text(&answer, 0)?.as_str() {
            "created" => Ok(LinkCodeOutcome::Created),
            "handled" => Ok(LinkCodeOutcome::AlreadyHandled),
            "taken" => Ok(LinkCodeOutcome::CodeTaken),
            "limited" => Ok(LinkCodeOutcome::Limited(limit_hit(&answer, 2)?)),
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn record_update(&self, update_id: i64, _now: Timestamp) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(Channel::Telegram, &format!("update:{update_id}")))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(HANDLED_UPDATES_KEPT.as_millis() as u64);
        let set: Option<String> = self.conn.query(&cmd).await?;
        Ok(set.is_some())
    }

    async fn take_link_code(&self, lookup: LinkLookup) -> Result<LinkLookupOutcome, StoreError> {
        let ch = Channel::Telegram;
        let mut call = self.scripts.link_take.prepare_invoke();
        call.key(self.key(ch, &format!("link:{}", hex::encode(lookup.hash.0))));
        call.arg(lookup.now.millis())
            .arg(send_member(lookup.now))
            .arg(self.tag(ch));
        for (key, rules) in &lookup.failure_keys {
            let rule = rules.rules().first().ok_or_else(|| {
                StoreError::Internal("a /target failure limit without a rule".into())
            })?;
            call.key(self.key(
                ch,
                &format!("sends:{}:{key}", kind_str(LimitKind::FailedLookup)),
            ))
            .arg(rule.minutes)
            .arg(rule.rate);
        }
        let answer: Vec<Value> = self.conn.invoke(&mut call).await?;
        match text(&answer, 0)?.as_str() {
            "found" => Ok(LinkLookupOutcome::Found(text(&answer, 1)?)),
            "not_found" => Ok(LinkLookupOutcome::NotFound),
            "limited" => Ok(LinkLookupOutcome::Limited(limit_hit(&answer, 1)?)),
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryStatus>, StoreError> {
        for channel in Channel::ALL {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(self.key(channel, &format!("job:{id}")));
            let fields: std::collections::HashMap<String, String> = self.conn.query(&cmd).await?;
            if fields.is_empty() {
                continue;
            }
            let mut cmd = redis::cmd("LRANGE");
            cmd.arg(self.key(channel, &format!("history:{id}")))
                .arg(0)
                .arg(-1);
            let history: Vec<String> = self.conn.query(&cmd).await?;
            return status_of(id, channel, &fields, &history).map(Some);
        }
        Ok(None)
    }

    async fn take_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<QuotaOutcome, StoreError> {
        if quotas.is_empty() {
            return Ok(QuotaOutcome::Taken);
        }
        let mut call = self.scripts.quota_take.prepare_invoke();
        call.arg(now.millis());
        for quota in quotas {
            call.key(self.quota_key(channel, &quota.key))
                .arg(quota.limit)
                .arg(quota.resets_at.millis());
        }
        let answer: Vec<Value> = self.conn.invoke(&mut call).await?;
        match text(&answer, 0)?.as_str() {
            "taken" => Ok(QuotaOutcome::Taken),
            "exhausted" => Ok(QuotaOutcome::Exhausted {
                index: number(&answer, 1)? as usize,
                resets_at: Timestamp::from_millis(number(&answer, 2)?),
            }),
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn return_quotas(
        &self,
        channel: Channel,
        quotas: &[Quota],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if quotas.is_empty() {
            return Ok(());
        }
        let mut call = self.scripts.quota_return.prepare_invoke();
        call.arg(now.millis());
        for quota in quotas {
            call.key(self.quota_key(channel, &quota.key));
        }
        let _: i64 = self.conn.invoke(&mut call).await?;
        Ok(())
    }

    async fn counters(
        &self,
        channel: Channel,
        keys: &[String],
        now: Timestamp,
    ) -> Result<Vec<Counter>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET")
                .arg(self.quota_key(channel, key))
                .arg("count")
                .arg("resets_at");
        }
        let states: Vec<(Option<i64>, Option<i64>)> = self.conn.pipeline(&pipe).await?;
        Ok(states
            .into_iter()
            .map(|(count, resets_at)| Counter::stored(count, resets_at, now))
            .collect())
    }

    async fn begin_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        now: Timestamp,
        pending_until: Timestamp,
    ) -> Result<IdempotencyBegin, StoreError> {
        let mut call = self.scripts.idem_begin.prepare_invoke();
        call.key(self.key(channel, &format!("idem:{key}")))
            .arg(now.millis())
            .arg(fingerprint)
            .arg(pending_until.millis());
        let answer: Vec<Value> = self.conn.invoke(&mut call).await?;
        match text(&answer, 0)?.as_str() {
            "proceed" => Ok(IdempotencyBegin::Proceed),
            "replay" => Ok(IdempotencyBegin::Replay(text(&answer, 1)?)),
            "conflict" => Ok(IdempotencyBegin::Conflict),
            "in_progress" => Ok(IdempotencyBegin::InProgress),
            other => Err(StoreError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn finish_idempotent(
        &self,
        channel: Channel,
        key: &str,
        fingerprint: &str,
        answer: Option<String>,
        keep_until: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut call = self.scripts.idem_finish.prepare_invoke();
        call.key(self.key(channel, &format!("idem:{key}")))
            .arg(now.millis())
            .arg(fingerprint)
            .arg(answer.unwrap_or_default())
            .arg(keep_until.millis());
        let _: i64 = self.conn.invoke(&mut call).await?;
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<(u64, EndedJobs), StoreError> {
        // Everything else expires by itself; jobs no worker took need a look.
        let mut ended = EndedJobs::default();
        for channel in Channel::ALL {
            let mut call = self.scripts.expire.prepare_invoke();
            call.key(self.key(channel, "queue"))
                .key(self.key(channel, "delayed"))
                .arg(now.millis())
                .arg(self.tag(channel))
                .arg(RETENTION.as_millis() as u64);
            let n: u64 = self.conn.invoke(&mut call).await?;
            ended.expired[channel as usize] = n;
        }
        Ok((ended.expired.iter().sum(), ended))
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, StoreError> {
        let mut stats = Vec::new();
        for channel in Channel::ALL {
            let unfinished = self.key(channel, "unfinished");
            let mut pipe = redis::pipe();
            pipe.cmd("ZCARD")
                .arg(&unfinished)
                .cmd("ZRANGE")
                .arg(&unfinished)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
            let (depth, oldest): (u64, Vec<(String, f64)>) = self.conn.pipeline(&pipe).await?;
            stats.push(OutboxStats {
                channel,
                depth,
                oldest_created_at: oldest
                    .first()
                    .map(|(_, at)| Timestamp::from_millis(*at as i64)),
            });
        }
        Ok(stats)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.conn.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    async fn close(&self) {}
}

impl RedisStore {
    /// Redis evicting keys would drop guess counts and send records, lifting limits an
    /// attacker runs into; only `noeviction` keeps them.
    async fn warn_about_eviction(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        match self.conn.query::<Vec<String>>(&cmd).await {
            Ok(answer) => match answer.get(1).map(String::as_str) {
                Some("noeviction") | None => {}
                Some(policy) => tracing::warn!(
                    policy,
                    "Redis may evict keys (maxmemory-policy); set it to noeviction, or guess and send limits can be lost under memory pressure"
                ),
            },
            // Managed services often forbid CONFIG; nothing to say then.
            Err(e) => tracing::debug!(error = %e, "cannot read Redis's maxmemory-policy"),
        }
    }

    async fn finish_in(
        &self,
        channel: Channel,
        id: DeliveryId,
        report: &AttemptReport,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let end = AttemptEnd::of(report);
        let mut call = self.scripts.finish.prepare_invoke();
        call.key(self.key(channel, &format!("job:{id}")))
            .key(self.key(channel, &format!("history:{id}")))
            .key(self.key(channel, "queue"))
            .key(self.key(channel, "delayed"))
            .arg(report.attempt)
            .arg(end.state.as_str())
            .arg(end.provider.unwrap_or_default())
            .arg(end.message_id.unwrap_or_default())
            .arg(end.error.unwrap_or_default())
            .arg(end.next_attempt_at.map(Timestamp::millis).unwrap_or(0))
            .arg(now.millis())
            .arg(RETENTION.as_millis() as u64)
            .arg(id.to_string());
        for tried in StoredTry::from_report(report, now) {
            let json = serde_json::to_string(&tried)
                .map_err(|e| StoreError::Internal(format!("cannot encode a history entry: {e}")))?;
            call.arg(json);
        }
        let written: i64 = self.conn.invoke(&mut call).await?;
        if written == 0 {
            tracing::warn!(delivery = %id, attempt = report.attempt, "a delivery attempt finished after its lease was taken over");
        }
        Ok(())
    }
}

fn status_of(
    id: DeliveryId,
    channel: Channel,
    fields: &std::collections::HashMap<String, String>,
    history: &[String],
) -> Result<DeliveryStatus, StoreError> {
    let field = |name: &str| fields.get(name).cloned();
    let millis = |name: &str| -> Result<i64, StoreError> {
        field(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::Internal(format!("delivery {id} lacks {name}")))
    };
    let rfc = |ms| Timestamp::from_millis(ms).to_rfc3339();
    let state_raw = field("state").unwrap_or_default();
    let state: DeliveryState = state_raw
        .parse()
        .map_err(|()| StoreError::Internal(format!("unknown delivery state {state_raw:?}")))?;
    let history = history
        .iter()
        .map(|raw| {
            serde_json::from_str::<StoredTry>(raw)
                .map(StoredTry::into_entry)
                .map_err(|e| StoreError::Internal(format!("unreadable delivery history: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeliveryStatus {
        id: id.to_string(),
        channel,
        state,
        attempts: field("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
        provider: field("provider"),
        provider_message_id: field("provider_message_id"),
        error: field("error"),
        created_at: rfc(millis("created_at")?),
        // A job not yet touched since its creation has neither (see enqueue in lib.lua).
        updated_at: rfc(millis("updated_at").or_else(|_| millis("created_at"))?),
        expires_at: rfc(millis("expires_at")?),
        next_attempt_at: match state {
            DeliveryState::Queued => Some(rfc(
                millis("next_attempt_at").or_else(|_| millis("created_at"))?
            )),
            _ => None,
        },
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A `redis-server` of the test's own on a Unix socket in `dir` (no port to collide
    /// on), stopped when dropped; None, said plainly, where none can run.
    struct PrivateRedis {
        child: Child,
        url: String,
    }

    impl PrivateRedis {
        fn start(dir: &std::path::Path, test: &str) -> Option<Self> {
            let socket = dir.join("redis.sock");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--unixsocket",
                ])
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(child) = child else {
                eprintln!("SKIPPED {test}: no redis-server on PATH (CI installs it)");
                return None;
            };
            let started = std::time::Instant::now();
            while !socket.exists() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the test's redis-server did not open its socket"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let url = format!("redis+unix://{}", socket.display());
            Some(PrivateRedis { child, url })
        }
    }

    impl Drop for PrivateRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// How many scripts the server has run since its statistics were last reset.
    async fn scripts_run(store: &RedisStore) -> u64 {
        let info: String = store
            .conn
            .query(redis::cmd("INFO").arg("commandstats"))
            .await
            .unwrap();
        info.lines()
            .filter(|line| {
                line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:")
            })
            .filter_map(|line| {
                line.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    #[tokio::test]
    async fn a_claim_ends_a_backlog_of_lapsed_jobs_in_bounded_script_calls() {
        let dir = tempfile::tempdir().unwrap();
        let test = "a_claim_ends_a_backlog_of_lapsed_jobs_in_bounded_script_calls";
        let Some(redis) = PrivateRedis::start(dir.path(), test) else {
            return;
        };
        let store = RedisStore::open(std::slice::from_ref(&redis.url), false, "t")
            .await
            .unwrap();
        let (now, lease) = (
            Timestamp::from_millis(2_000),
            Timestamp::from_millis(62_000),
        );
        // Loads the script, so that the calls counted below are the claim's own.
        store
            .claim_deliveries(Channel::Sms, now, lease, 10)
            .await
            .unwrap();
        let lapsed = CLAIM_STEP * 2 + 50;
        for i in 0..lapsed {
            store
                .create_code(NewCode::queued_for_test(&format!("+7701{i:07}"), 1_000))
                .await
                .unwrap();
        }
        let live = NewCode::queued_for_test("+77019999999", 3_600_000);
        let live_id = live.delivery_id;
        store.create_code(live).await.unwrap();
        store
            .conn
            .query::<()>(redis::cmd("CONFIG").arg("RESETSTAT"))
            .await
            .unwrap();

        let (jobs, ended) = store
            .claim_deliveries(Channel::Sms, now, lease, 10)
            .await
            .unwrap();

        let ids: Vec<DeliveryId> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, [live_id], "only the live job is claimed");
        assert_eq!(ended.expired[Channel::Sms as usize], lapsed as u64);
        assert_eq!(
            scripts_run(&store).await,
            3,
            "each call of the script ends at most {CLAIM_STEP} lapsed jobs"
        );
        store.close().await;
    }
}
