//! Fills a store with live codes (and their queued delivery jobs) directly, far faster
//! than through HTTP, for the benchmark's "1,000,000 live codes" and delivery runs.
//!
//!     cargo run --release --example seed -- STORE_URL COUNT FIRST_PHONE [PREFIX] [--delivered]
//!
//! Phones FIRST_PHONE.. get the code 123456 (hashed with OTP_SECRET, which must match
//! the otpd that reads the store), living an hour. With `--delivered` their jobs are
//! then marked sent here, so that otpd does not spend the measured runs draining them.
//! The default limit rules are in force again at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use otpd::clock::{Clock, SystemClock};
use otpd::config::StoreUrl;
use otpd::delivery::{AttemptReport, AttemptResult, DeliveryId};
use otpd::domain::Channel;
use otpd::domain::code::Password;
use otpd::domain::limits::{LimitRules, LimitRulesUpdate};
use otpd::domain::message::Templates;
use otpd::domain::secret::Secret;
use otpd::store::{CreateOutcome, NewCode, RedisStore, SharedStore, SqliteStore};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, count, first) = match args.as_slice() {
        [_, url, count, first, ..] => (
            url.clone(),
            count.parse::<u64>().unwrap(),
            first.parse::<u64>().unwrap(),
        ),
        _ => panic!("usage: seed STORE_URL COUNT FIRST_PHONE [PREFIX]"),
    };
    let prefix = args.get(4).cloned().unwrap_or_else(|| "otpd".into());
    let delivered = args.iter().any(|a| a == "--delivered");
    let secret = std::env::var("OTP_SECRET").expect("OTP_SECRET");
    let secret = Arc::new(Secret::new(secret.as_bytes()).unwrap());
    let store: SharedStore = match url.parse::<StoreUrl>().unwrap() {
        StoreUrl::Sqlite(path) => Arc::new(SqliteStore::open(&path).unwrap()),
        StoreUrl::Redis(url) => Arc::new(RedisStore::open(&[url], false, &prefix).await.unwrap()),
        StoreUrl::RedisCluster(nodes) => {
            Arc::new(RedisStore::open(&nodes, true, &prefix).await.unwrap())
        }
    };
    // No send limits: the seed writes far more than 5 codes in 10 minutes per run.
    store
        .update_limit_rules(
            Channel::Sms,
            LimitRulesUpdate {
                ips: Some(Default::default()),
                targets: Some(Default::default()),
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let password = Password::parse("123456").unwrap();
    let content = Templates::default()
        .render(Channel::Sms, &password, false)
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    // Enough in flight that each group commit carries a few hundred codes.
    let workers = 256u64;
    for w in 0..workers {
        let (store, secret, password, content) = (
            store.clone(),
            secret.clone(),
            password.clone(),
            content.clone(),
        );
        tasks.spawn(async move {
            let mut i = w;
            while i < count {
                let target = (first + i).to_string();
                let now = SystemClock.now();
                let code = NewCode {
                    channel: Channel::Sms,
                    hash: secret.code_hash(Channel::Sms, &target, &password),
                    target,
                    ip: None,
                    now,
                    expires_at: now.plus(Duration::from_secs(3600)),
                    max_active: 3,
                    delivery_id: DeliveryId::new(now),
                    content: content.clone(),
                    code: password.clone(),
                    failure_budget: None,
                    lease_until: None,
                };
                assert_eq!(
                    store.create_code(code).await.unwrap(),
                    CreateOutcome::Created
                );
                i += workers;
            }
        });
    }
    tasks.join_all().await;
    if delivered {
        mark_sent(&store, count).await;
    }
    let defaults = LimitRules::default();
    store
        .update_limit_rules(
            Channel::Sms,
            LimitRulesUpdate {
                ips: Some(defaults.ips),
                targets: Some(defaults.targets),
            },
        )
        .await
        .unwrap();
    store.close().await;
    eprintln!(
        "seeded {count} codes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Claims every queued SMS job and reports it sent, as a worker would, without sending.
async fn mark_sent(store: &SharedStore, count: u64) {
    let mut done = 0u64;
    while done < count {
        let now = SystemClock.now();
        let (jobs, _) = store
            .claim_deliveries(Channel::Sms, now, now.plus(Duration::from_secs(600)), 1000)
            .await
            .unwrap();
        if jobs.is_empty() {
            break;
        }
        let mut reports = tokio::task::JoinSet::new();
        for job in jobs {
            let store = store.clone();
            reports.spawn(async move {
                let report = AttemptReport {
                    attempt: job.attempts,
                    result: AttemptResult::Sent {
                        provider: "seed".into(),
                        message_id: None,
                    },
                    tries: Vec::new(),
                };
                store
                    .finish_attempt(Channel::Sms, job.id, report, SystemClock.now())
                    .await
                    .unwrap();
            });
        }
        done += reports.join_all().await.len() as u64;
    }
}
