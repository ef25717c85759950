//! Failover, backoff until the code expires, permanent refusals, a provider that hangs,
//! and jobs that outlive the process sending them.

use std::time::{Duration, UNIX_EPOCH};

use otpd::clock::Clock;
use serde_json::{Value, json};

use crate::durability::{call, start};
use crate::fakes::http::{FakeHttp, refused_url};
use crate::support::TestApp;

const PHONE: &str = "77011234567";

/// SMS through `webhook` alone, to `gateway`.
async fn webhook_app(gateway: &FakeHttp, more: &[&str]) -> TestApp {
    let hook = format!("{}/hook", gateway.url());
    let mut args = vec!["--sms-providers", "webhook", "--sms-webhook-url", &hook];
    args.extend_from_slice(more);
    TestApp::spawn_with(&args).await
}

/// SMS through `webhook` first, then `perfumer`.
async fn two_provider_app(first: &str, second: &FakeHttp, more: &[&str]) -> TestApp {
    let hook = format!("{first}/hook");
    let perfumer = second.url();
    let mut args = vec![
        "--sms-providers",
        "webhook,perfumer",
        "--sms-webhook-url",
        &hook,
        "--perfumer-sms-url",
        &perfumer,
    ];
    args.extend_from_slice(more);
    TestApp::spawn_with(&args).await
}

async fn create_sms(t: &TestApp, extra: Value) -> String {
    let mut body = json!({"phone": PHONE, "password": "8642"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let created = t.post_ok("/sms", body).await;
    created["id"].as_str().unwrap().to_owned()
}

fn outcomes(d: &Value) -> Vec<(String, String)> {
    d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["provider"].as_str().unwrap().to_owned(),
                h["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(provider: &str, outcome: &str) -> (String, String) {
    (provider.to_owned(), outcome.to_owned())
}

#[tokio::test]
async fn a_failing_provider_hands_the_same_attempt_to_the_next() {
    let first = FakeHttp::start().await;
    first.respond(503, "upstream down");
    let second = FakeHttp::start().await;
    let t = two_provider_app(&first.url(), &second, &[]).await;
    let id = create_sms(&t, json!({})).await;
    let d = t.finished_delivery(&id).await;
    assert_eq!(d["state"], "sent");
    assert_eq!(d["provider"], "perfumer");
    assert_eq!(d["attempts"], 1);
    assert_eq!(
        outcomes(&d),
        [pair("webhook", "retryable"), pair("perfumer", "sent")]
    );
    assert_eq!(d["history"][0]["error"], "HTTP 503: upstream down");
    assert_eq!(first.requests().len(), 1);
    assert_eq!(second.requests().len(), 1);
    assert_eq!(
        t.stored_message(&id),
        None,
        "the message is erased once sent"
    );

    // Nothing listening counts the same as a 5xx.
    let t = two_provider_app(&refused_url(), &second, &[]).await;
    let id = create_sms(&t, json!({})).await;
    let d = t.finished_delivery(&id).await;
    assert_eq!(d["provider"], "perfumer");
    let error = d["history"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("cannot connect"), "{error}");
}

#[tokio::test]
async fn a_permanent_refusal_fails_at_once_without_trying_the_next_provider() {
    let first = FakeHttp::start().await;
    first.respond(422, r#"{"error": "number is not mobile"}"#);
    let second = FakeHttp::start().await;
    let t = two_provider_app(&first.url(), &second, &[]).await;
    let id = create_sms(&t, json!({})).await;
    let d = t.finished_delivery(&id).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["attempts"], 1);
    assert_eq!(
        d["error"],
        r#"webhook: HTTP 422: {"error": "number is not mobile"}"#
    );
    assert_eq!(outcomes(&d), [pair("webhook", "permanent")]);
    assert!(second.requests().is_empty());
    assert_eq!(t.stored_message(&id), None);
}

fn secs(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn retryable_failures_back_off_exponentially_and_stop_at_the_codes_expiry() {
    let gateway = FakeHttp::start().await;
    gateway.respond(503, "");
    let t = webhook_app(&gateway, &[]).await;
    let id = create_sms(&t, json!({"lifetime": 60})).await;
    let expires = secs(&t.delivery(&id).await["expires_at"]);

    let mut delays = Vec::new();
    let mut attempts: u64 = 1;
    let last = loop {
        let d = t.attempted(&id, attempts).await;
        if d["state"] != "queued" {
            break d;
        }
        assert!(t.stored_message(&id).is_some(), "kept for the retry");
        let now = t.clock.now().millis() / 1000;
        let next = secs(&d["next_attempt_at"]);
        // Whole seconds: a retry planned just before the expiry shows the same second.
        assert!(next <= expires, "no retry is planned past the expiry");
        delays.push(next - now);
        // Move exactly to the planned retry: the worker wakes on the clock, not a timer.
        t.clock
            .advance(Duration::from_secs((next - now + 1).max(1) as u64));
        attempts += 1;
    };
    assert_eq!(last["state"], "expired", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("expired") && error.contains("HTTP 503"),
        "{error}"
    );
    // Base 2 s, doubling, jittered into [d/2, d] (±1 s for whole-second timestamps).
    for (i, delay) in delays.iter().enumerate() {
        let full = 2_i64 << i;
        assert!(
            (full / 2 - 1..=full + 1).contains(delay),
            "retry {}: {delay} s not in [{}, {}] ({delays:?})",
            i + 1,
            full / 2,
            full
        );
    }
    assert!(delays.len() >= 3, "{delays:?}");
    // The last planned retry may fall in the second before the expiry, which the clock
    // then passes: the job ends expired without that try.
    let attempts = last["attempts"].as_u64().unwrap();
    assert_eq!(gateway.requests().len() as u64, attempts);
    assert_eq!(last["history"].as_array().unwrap().len() as u64, attempts);
    assert_eq!(
        t.stored_message(&id),
        None,
        "the message is erased at expiry"
    );
}

#[tokio::test]
async fn a_hanging_provider_times_out_into_the_next_and_holds_up_nothing_else() {
    let stuck = FakeHttp::start().await;
    stuck.hang();
    let second = FakeHttp::start().await;
    let t = two_provider_app(&stuck.url(), &second, &["--provider-timeout", "5"]).await;
    let id = create_sms(&t, json!({})).await;
    stuck.wait_for_requests(1).await;

    // While the SMS waits on its provider, the API answers and e-mail goes out.
    assert!(t.get("/health").await.ok());
    let email = t
        .post_ok("/email", json!({"email": "a@example.com", "password": "1"}))
        .await;
    let email = t.finished_delivery(email["id"].as_str().unwrap()).await;
    assert_eq!(email["state"], "sent");
    assert_eq!(t.delivery(&id).await["state"], "sending");

    t.advance(4);
    assert_eq!(t.delivery(&id).await["state"], "sending");
    assert!(second.requests().is_empty(), "still waiting on the first");
    t.advance(1);
    let d = t.finished_delivery(&id).await;
    assert_eq!(d["state"], "sent");
    assert_eq!(d["provider"], "perfumer");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["history"][0]["error"], "no answer within 5 s");
    assert_eq!(second.requests().len(), 1);
}

/// A code made while the worker has a sending slot free is stored already leased to it,
/// at its first attempt, and sent without being claimed back from the store; one made
/// while every slot is busy waits queued until a slot frees.
#[tokio::test]
async fn a_code_goes_straight_to_a_free_sending_slot_and_waits_queued_while_none_is() {
    let gateway = FakeHttp::start().await;
    gateway.hang();
    let t = webhook_app(&gateway, &["--delivery-workers", "1"]).await;
    let handed = create_sms(&t, json!({})).await;
    let d = t.delivery(&handed).await;
    assert_eq!(
        TestApp::state_and_attempts(&d),
        (Some("sending"), Some(1)),
        "{d}"
    );
    gateway.wait_for_requests(1).await;

    let queued = create_sms(&t, json!({"phone": "77017654321"})).await;
    let d = t.delivery(&queued).await;
    assert_eq!(
        TestApp::state_and_attempts(&d),
        (Some("queued"), Some(0)),
        "{d}"
    );

    gateway.respond(200, "{}");
    for id in [&handed, &queued] {
        let d = t.finished_delivery(id).await;
        assert_eq!(
            TestApp::state_and_attempts(&d),
            (Some("sent"), Some(1)),
            "{d}"
        );
    }
    let sent: Vec<Value> = gateway
        .requests()
        .iter()
        .map(|r| r.json()["id"].clone())
        .collect();
    assert_eq!(
        sent,
        [json!(handed), json!(queued)],
        "each sent once, in order"
    );
}

#[tokio::test]
async fn a_planned_retry_survives_a_restart() {
    let gateway = FakeHttp::start().await;
    gateway.respond_once(500, "");
    let t = webhook_app(&gateway, &[]).await;
    let id = create_sms(&t, json!({})).await;
    let d = t.attempted(&id, 1).await;
    assert_eq!(d["state"], "queued");

    let t = t.restart().await;
    t.advance(5);
    let d = t.finished_delivery(&id).await;
    assert_eq!(d["state"], "sent");
    assert_eq!(d["attempts"], 2);
    assert_eq!(
        outcomes(&d),
        [pair("webhook", "retryable"), pair("webhook", "sent")]
    );
    let requests = gateway.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].json(),
        requests[1].json(),
        "the same job, resent"
    );
    assert_eq!(requests[1].json()["id"], id.as_str());
}

#[tokio::test]
async fn a_job_whose_process_died_mid_send_is_sent_by_the_next_one() {
    let gateway = FakeHttp::start().await;
    gateway.hang();
    let hook = format!("{}/hook", gateway.url());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTP_SMS_PROVIDERS", "webhook"),
        ("OTP_SMS_WEBHOOK_URL", hook.as_str()),
    ];
    let mut first = start(dir.path(), &env);
    let client = reqwest::Client::new();
    let created = call(
        &client,
        reqwest::Method::POST,
        format!("{}/sms", first.base),
        json!({"phone": PHONE, "password": "2718"}),
    )
    .await;
    let id = created["content"]["id"].as_str().unwrap().to_owned();
    gateway.wait_for_requests(1).await;
    first.child.kill().unwrap(); // SIGKILL in the middle of the send
    first.child.wait().unwrap();

    gateway.respond(200, "{}");
    let mut second = start(dir.path(), &env);
    let requests = gateway.wait_for_requests(2).await;
    assert_eq!(requests[1].json()["id"], id.as_str());
    assert_eq!(requests[1].json()["message"], "Your code is 2718");
    let mut state = Value::Null;
    for _ in 0..500 {
        state = call(
            &client,
            reqwest::Method::GET,
            format!("{}/deliveries/{id}", second.base),
            json!({}),
        )
        .await;
        if state["content"]["state"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state["content"]["state"], "sent", "{state}");
    assert_eq!(state["content"]["attempts"], 2);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[tokio::test]
async fn a_job_no_worker_sent_is_expired_and_erased_by_the_purger() {
    let t = TestApp::spawn_with(&["--delivery-workers", "0"]).await;
    let id = create_sms(&t, json!({"lifetime": 30})).await;
    assert!(t.stored_message(&id).is_some());
    t.advance(31);
    t.app().purge_expired().await.unwrap();
    let d = t.delivery(&id).await;
    assert_eq!(d["state"], "expired");
    assert_eq!(t.stored_message(&id), None);
}

#[tokio::test]
async fn a_damaged_job_fails_alone_and_its_channel_keeps_sending() {
    let t = TestApp::spawn_with(&["--delivery-workers", "0"]).await;
    let damaged = create_sms(&t, json!({})).await;
    let fine = create_sms(&t, json!({"phone": "77017654321"})).await;
    t.corrupt_message(&damaged);
    let t = t.restart_with(Vec::new()).await;
    assert_eq!(t.finished_delivery(&fine).await["state"], "sent");
    let d = t.finished_delivery(&damaged).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["error"], "the stored job could not be read");
    assert_eq!(t.stored_message(&damaged), None);
}
