//! Scale-out: several otpd replicas on one Redis behave as one service. These always run
//! on Redis (a private `redis-server`, or `OTPD_TEST_REDIS_URL`), whatever store the
//! rest of the suite uses.

use std::time::Duration;

use otpd::clock::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::durability::{Otpd, call, start};
use crate::fakes::http::FakeHttp;
use crate::redis_server::{self, RedisServer};
use crate::support::{REDIS_SECRET, TestApp, TestStore, all_at_once};

const PHONE: &str = "77011234567";

/// Three in-process replicas sharing one Redis namespace and one clock.
async fn three_replicas(args: &[&str]) -> Option<[TestApp; 3]> {
    if !redis_server::available() {
        redis_server::skip_notice("scale-out");
        return None;
    }
    let a = TestApp::spawn_on(TestStore::redis(redis_server::shared_url()), args).await;
    let b = a.replica().await;
    let c = a.replica().await;
    Some([a, b, c])
}

#[tokio::test]
async fn a_code_made_on_one_replica_checks_on_another_and_is_then_spent_for_all() {
    let Some([a, b, c]) = three_replicas(&[]).await else {
        return;
    };
    a.post_ok("/sms", json!({"phone": PHONE, "password": "424242"}))
        .await;
    let body = json!({"phone": PHONE, "password": "424242"});
    assert_eq!(b.check_outcome("sms", body.clone()).await, "ok");
    assert_eq!(c.check_outcome("sms", body).await, "invalid_password");
    // Limit rules set through one replica hold on the others.
    b.post_ok(
        "/limit/sms",
        json!({"phones": [{"minutes": 10, "rate": 1}]}),
    )
    .await;
    let shown = c.get("/limit/sms").await;
    assert_eq!(
        shown.body["content"]["phones"],
        json!([{"minutes": 10, "rate": 1}])
    );
}

#[tokio::test]
async fn a_send_limit_holds_across_replicas_under_concurrent_load() {
    let Some(replicas) = three_replicas(&["--delivery-workers", "0"]).await else {
        return;
    };
    replicas[0]
        .post_ok(
            "/limit/sms",
            json!({"phones": [{"minutes": 10, "rate": 3}]}),
        )
        .await;
    let answers = all_at_once(
        &replicas,
        60,
        reqwest::Method::POST,
        "/sms",
        |i| json!({"phone": PHONE, "password": format!("{i:06}")}),
    )
    .await;
    let accepted = answers.iter().filter(|a| *a == "success").count();
    let limited = answers.iter().filter(|a| *a == "phone_limit").count();
    assert_eq!((accepted, limited), (3, 57), "{answers:?}");
}

#[tokio::test]
async fn concurrent_wrong_guesses_across_replicas_never_exceed_max_attempts() {
    let Some(replicas) = three_replicas(&["--max-attempts", "5"]).await else {
        return;
    };
    replicas[0]
        .post_ok("/sms", json!({"phone": PHONE, "password": "777777"}))
        .await;
    let answers = all_at_once(
        &replicas,
        50,
        reqwest::Method::GET,
        "/sms/check",
        |i| json!({"phone": PHONE, "password": format!("{:06}", 100_000 + i)}),
    )
    .await;
    let wrong = answers.iter().filter(|a| *a == "invalid_password").count();
    let exceeded = answers.iter().filter(|a| *a == "attempts_exceeded").count();
    assert_eq!((wrong, exceeded), (5, 45), "{answers:?}");
    // The right code no longer helps: the codes were burned at the fifth.
    let right = json!({"phone": PHONE, "password": "777777"});
    assert_eq!(
        replicas[1].check_outcome("sms", right).await,
        "attempts_exceeded"
    );
}

#[tokio::test]
async fn concurrent_checks_go_to_redis_together_and_a_damaged_target_fails_alone() {
    let Some(replicas) = three_replicas(&["--delivery-workers", "0"]).await else {
        return;
    };
    let phone = |i: usize| format!("7701100{i:04}");
    let created = all_at_once(
        &replicas,
        40,
        reqwest::Method::POST,
        "/sms",
        |i| json!({"phone": phone(i), "password": "123456"}),
    )
    .await;
    assert!(created.iter().all(|a| a == "success"), "{created:?}");
    replicas[0].corrupt_redis_target(&phone(7));
    let check_all = || {
        all_at_once(
            &replicas,
            40,
            reqwest::Method::GET,
            "/sms/check",
            |i| json!({"phone": phone(i), "password": "123456"}),
        )
    };
    // Forty checks at once, on three replicas: each replica's go to Redis in batches
    // (one script call each), and the damaged one must not fail the others with it.
    let checked = check_all().await;
    for (i, outcome) in checked.iter().enumerate() {
        let expected = if i == 7 { "internal" } else { "success" };
        assert_eq!(outcome, expected, "check {i}: {checked:?}");
    }
    // Each code was spent by its check.
    let again = check_all().await;
    assert!(
        again
            .iter()
            .enumerate()
            .all(|(i, a)| i == 7 || a == "invalid_password"),
        "{again:?}"
    );
}

/// A real replica process on `redis`, sending SMS through `gateway`.
fn replica_process(dir: &std::path::Path, redis: &str, gateway: &str) -> Otpd {
    start(
        dir,
        &[
            ("OTP_STORE", redis),
            ("OTP_REDIS_PREFIX", "scale"),
            ("OTP_SECRET", REDIS_SECRET),
            ("OTP_SMS_PROVIDERS", "webhook"),
            ("OTP_SMS_WEBHOOK_URL", gateway),
            ("OTP_PROVIDER_TIMEOUT", "1"),
            // A short lease, so that the takeover happens within the test.
            ("OTP_DELIVERY_LEASE", "3"),
        ],
    )
}

async fn state_of(base: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    call(
        &client,
        reqwest::Method::GET,
        format!("{base}/deliveries/{id}"),
        json!({}),
    )
    .await["content"]
        .clone()
}

#[tokio::test]
async fn a_replica_killed_while_sending_has_its_jobs_delivered_by_the_others() {
    if !redis_server::can_start("redis-server", "a_replica_killed_while_sending") {
        return;
    }
    let redis = RedisServer::start(false);
    let gateway = FakeHttp::start().await;
    gateway.hang();
    let hook = format!("{}/hook", gateway.url());
    let dir = tempfile::tempdir().unwrap();
    let mut doomed = replica_process(dir.path(), &redis.url(), &hook);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = call(
            &client,
            reqwest::Method::POST,
            format!("{}/sms", doomed.base),
            json!({"phone": format!("770112345{i:02}"), "password": format!("{i:04}")}),
        )
        .await;
        ids.push(created["content"]["id"].as_str().unwrap().to_owned());
    }
    // Every job is in the doomed replica's hands, waiting on the gateway.
    gateway.wait_for_requests(5).await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();

    gateway.respond(200, "{}");
    let others = [
        replica_process(dir.path(), &redis.url(), &hook),
        replica_process(dir.path(), &redis.url(), &hook),
    ];
    let requests = gateway.wait_for_requests(10).await;
    for id in &ids {
        let mut d = Value::Null;
        for _ in 0..500 {
            d = state_of(&others[0].base, id).await;
            if d["state"] == "sent" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d["state"], "sent", "{d}");
        assert_eq!(d["attempts"], 2, "{d}");
        let sends = requests
            .iter()
            .filter(|r| r.json()["id"] == id.as_str())
            .count();
        assert_eq!(sends, 2, "once by the dead replica, once by a survivor");
    }
    for mut other in others {
        other.child.kill().unwrap();
        other.child.wait().unwrap();
    }
}

#[tokio::test]
async fn a_redis_restart_is_survived_without_restarting_otpd() {
    if !redis_server::can_start("redis-server", "a_redis_restart_is_survived") {
        return;
    }
    let mut redis = RedisServer::start(true);
    let t = TestApp::spawn_on(TestStore::redis(redis.url()), &[]).await;
    t.post_ok("/sms", json!({"phone": PHONE, "password": "135790"}))
        .await;

    redis.kill();
    let ready = t.get("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let refused = t
        .post("/sms", json!({"phone": "77019999999", "password": "1"}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
    assert!(refused.headers.contains_key("retry-after"));

    redis.restart();
    let mut ready = false;
    for _ in 0..500 {
        if t.get("/ready").await.ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "otpd reconnected by itself");
    // Redis kept every acknowledged write (append-only, fsync always).
    let body = json!({"phone": PHONE, "password": "135790"});
    assert_eq!(t.check_outcome("sms", body).await, "ok");
    t.post_ok("/sms", json!({"phone": PHONE, "password": "246801"}))
        .await;
}

#[tokio::test]
async fn a_redis_cluster_serves_every_operation_within_its_slots() {
    if !redis_server::can_start("redis-cli", "a_redis_cluster_serves_every_operation") {
        return;
    }
    let nodes = RedisServer::start_cluster();
    let seeds: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let url = format!("redis+cluster://{}", seeds.join(","));
    let t = TestApp::spawn_on(TestStore::redis(url), &[]).await;
    // B sends nothing, so that every code is printed on A's console, where it is read.
    let b = t.replica_with(&["--delivery-workers", "0"]).await;
    // Every channel (each its own slot), through delivery to the check.
    for (channel, body) in [
        ("sms", json!({"phone": PHONE})),
        ("call", json!({"phone": PHONE})),
        ("email", json!({"email": "a@example.com"})),
        ("telegram", json!({"chat_id": "1234567890"})),
    ] {
        let code = t.create_and_read_code(channel, body.clone()).await;
        let mut check = body.clone();
        check["password"] = json!(code);
        assert_eq!(b.check_outcome(channel, check).await, "ok", "{channel}");
    }
    b.post_ok(
        "/limit/sms",
        json!({"phones": [{"minutes": 10, "rate": 1}]}),
    )
    .await;
    let limited = t.post("/sms", json!({"phone": "77010000001"})).await;
    assert!(limited.ok());
    let limited = t.post("/sms", json!({"phone": "77010000001"})).await;
    assert_eq!(limited.code(), "phone_limit");
    assert!(t.get("/ready").await.ok());
}

#[tokio::test]
async fn a_full_redis_refuses_every_check_instead_of_counting_only_some() {
    if !redis_server::can_start("redis-server", "a_full_redis_refuses_every_check") {
        return;
    }
    let redis = RedisServer::start(false);
    let t = TestApp::spawn_on(TestStore::redis(redis.url()), &["--max-attempts", "2"]).await;
    t.post_ok("/sms", json!({"phone": PHONE, "password": "864200"}))
        .await;
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let set_limit = |admin: &mut redis::Connection, bytes: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query(admin)
            .unwrap();
    };
    set_limit(&mut admin, "1");
    // Out of memory, a wrong guess cannot be counted, so no guess is answered at all.
    for password in ["000001", "000002", "000003", "864200"] {
        let a = t
            .get_with_body("/sms/check", json!({"phone": PHONE, "password": password}))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            "{password}"
        );
    }
    set_limit(&mut admin, "0");
    let right = json!({"phone": PHONE, "password": "864200"});
    assert_eq!(t.check_outcome("sms", right).await, "ok");
}

/// A code created on Redis with no worker running, for the tests of what an earlier
/// version left there: the app, the code's job id, and a connection to the same Redis
/// with the app's key prefix.
struct Queued {
    t: TestApp,
    id: String,
    redis: redis::Connection,
    prefix: String,
}

async fn queued_on_redis(test: &str, password: &str) -> Option<Queued> {
    if !redis_server::available() {
        redis_server::skip_notice(test);
        return None;
    }
    let store = TestStore::redis(redis_server::shared_url());
    let t = TestApp::spawn_on(store.clone(), &["--delivery-workers", "0"]).await;
    let created = t
        .post_ok("/sms", json!({"phone": PHONE, "password": password}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let TestStore::Redis { url, prefix } = store else {
        unreachable!("a Redis store")
    };
    let redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    Some(Queued {
        t,
        id,
        redis,
        prefix,
    })
}

/// How many console messages carried `code`.
fn sent_with(t: &TestApp, code: &str) -> usize {
    t.console
        .lines()
        .iter()
        .filter(|l| l.contains(code))
        .count()
}

/// Before leases moved to the delayed set, a worker's claim left the job's stream entry
/// pending in the consumer group until the job ended. Such a job, left by a worker of
/// that version, is neither lost nor taken early: it is sent once its lease runs out.
#[tokio::test]
async fn a_job_an_earlier_version_left_leased_in_the_stream_is_sent_when_its_lease_ends() {
    let Some(Queued {
        t,
        id,
        mut redis,
        prefix,
    }) = queued_on_redis("a_job_an_earlier_version_left_leased", "5550").await
    else {
        return;
    };
    let (queue, job) = (
        format!("{{{prefix}:sms}}:queue"),
        format!("{{{prefix}:sms}}:job:{id}"),
    );
    // What that version's claim wrote: the entry read into the group, the lease on the job.
    let _: redis::Value = redis::cmd("XGROUP")
        .arg(&["CREATE", &queue, "workers", "0", "MKSTREAM"])
        .query(&mut redis)
        .unwrap_or(redis::Value::Nil);
    type Read = Vec<(String, Vec<(String, Vec<String>)>)>;
    let read: Read = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "workers", "gone", "COUNT", "1", "STREAMS", &queue, ">",
        ])
        .query(&mut redis)
        .unwrap();
    let entry = read[0].1[0].0.clone();
    let lease_until = t.clock.now().millis() + 60_000;
    let _: () = redis::cmd("HSET")
        .arg(&job)
        .arg(&["state", "sending", "attempts", "1", "entry", &entry])
        .arg("lease_until")
        .arg(lease_until)
        .query(&mut redis)
        .unwrap();

    let t = t.restart_with(Vec::new()).await;
    let pending = |redis: &mut redis::Connection| -> i64 {
        let summary: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&queue)
            .arg("workers")
            .query(redis)
            .unwrap();
        summary.0
    };
    for _ in 0..500 {
        if pending(&mut redis) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pending(&mut redis),
        0,
        "the worker took over the entry's lease"
    );
    let d = t.delivery(&id).await;
    assert_eq!(
        TestApp::state_and_attempts(&d),
        (Some("sending"), Some(1)),
        "{d}"
    );

    t.advance(61);
    let d = t.finished_delivery(&id).await;
    assert_eq!(
        TestApp::state_and_attempts(&d),
        (Some("sent"), Some(2)),
        "{d}"
    );
    assert_eq!(
        sent_with(&t, "5550"),
        1,
        "sent once, by the worker that took it over"
    );
}

/// Earlier versions kept a job's message under a key of its own (`msg:<id>`), not in the
/// job's hash. A job such a version queued is still sent after an upgrade.
#[tokio::test]
async fn a_job_queued_with_its_message_under_a_key_of_its_own_is_still_sent() {
    let Some(Queued {
        t,
        id,
        mut redis,
        prefix,
    }) = queued_on_redis(
        "a_job_queued_with_its_message_under_a_key_of_its_own",
        "5551",
    )
    .await
    else {
        return;
    };
    let job = format!("{{{prefix}:sms}}:job:{id}");
    // As that version wrote it: the message beside the job, none in it.
    let message: String = redis::cmd("HGET")
        .arg(&job)
        .arg("msg")
        .query(&mut redis)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{{{prefix}:sms}}:msg:{id}"))
        .arg(&message)
        .arg("PX")
        .arg(300_000)
        .query(&mut redis)
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(&job)
        .arg("msg")
        .query(&mut redis)
        .unwrap();

    let t = t.restart_with(Vec::new()).await;
    let d = t.finished_delivery(&id).await;
    assert_eq!(
        TestApp::state_and_attempts(&d),
        (Some("sent"), Some(1)),
        "{d}"
    );
    assert_eq!(
        sent_with(&t, "5551"),
        1,
        "sent once, with the message kept beside the job"
    );
}

/// A code's job handed to the worker at creation is written leased, so that nobody else
/// sends it while the lease lasts. A client that gives up while the code is being
/// stored must not leave it there unhanded: it is sent at once, not when the lease ends.
#[tokio::test]
async fn a_code_whose_client_gave_up_while_it_was_stored_is_still_sent_at_once() {
    if !redis_server::can_start("redis-server", "a_code_whose_client_gave_up") {
        return;
    }
    let redis = RedisServer::start(false);
    let t = TestApp::spawn_on(TestStore::redis(redis.url()), &[]).await;
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Writes wait for half a second: the create is held in the store meanwhile.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "500", "WRITE"])
        .query(&mut admin)
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/sms", t.base))
        .json(&json!({"phone": PHONE, "password": "7117"}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up before the answer");

    // The clock never moves, so no lease ends: only a job handed over is sent.
    for _ in 0..500 {
        if t.console.lines().iter().any(|l| l.contains("7117")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the code was not sent: {:?}", t.console.lines());
}
