//! Abuse resistance: phones of refused kinds and countries, daily caps, the resend
//! cooldown, the wrong-guess budget, test targets, and the attacks they stop.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::operability::{has, metrics_of};
use crate::support::{TestApp, all_at_once};

const KZ_MOBILE: &str = "77011234567";
const UK_PREMIUM: &str = "449098790000";

/// Seconds from the app's clock to the next UTC midnight.
fn secs_to_midnight(t: &TestApp) -> u64 {
    use otpd::clock::Clock;
    let day = 86_400_000;
    let now = t.clock.now().millis();
    (((now / day + 1) * day - now) as u64).div_ceil(1000)
}

#[tokio::test]
async fn phones_of_refused_kinds_and_countries_are_refused_with_the_reason_and_counted() {
    let t = TestApp::spawn_with(&["--phone-countries-deny", "RU"]).await;
    let cases = [
        (
            UK_PREMIUM,
            "\"phone\" is a premium-rate number, which cannot receive codes by sms",
        ),
        (
            "41840123456",
            "\"phone\" is a shared-cost number, which cannot receive codes by sms",
        ),
        (
            "70000000000",
            "\"phone\" is not a valid number for its country",
        ),
        (
            "79123456789",
            "\"phone\" is in RU, where codes are not sent",
        ),
    ];
    for (phone, message) in cases {
        let a = t.post("/sms", json!({"phone": phone})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{phone}");
        assert_eq!(
            a.body,
            json!({"status": false, "status_code": "invalid_parameter", "message": message})
        );
    }
    // A premium line cannot be called either; Kazakh mobiles get both.
    assert_eq!(
        t.post("/call", json!({"phone": UK_PREMIUM})).await.code(),
        "invalid_parameter"
    );
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
    t.post_ok("/call", json!({"phone": KZ_MOBILE})).await;

    let metrics = metrics_of(&t).await;
    for (channel, reason, n) in [
        ("sms", "premium_rate", 1),
        ("sms", "shared_cost", 1),
        ("sms", "invalid_number", 1),
        ("sms", "country_denied", 1),
        ("call", "premium_rate", 1),
    ] {
        has(
            &metrics,
            &format!("otpd_abuse_refusals_total{{channel=\"{channel}\",reason=\"{reason}\"}} {n}"),
        );
    }
}

#[tokio::test]
async fn an_allow_list_admits_only_its_countries() {
    let t = TestApp::spawn_with(&["--phone-countries-allow", "KZ,UZ"]).await;
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
    let a = t.post("/sms", json!({"phone": "447400123456"})).await;
    assert_eq!(
        a.body["message"],
        "\"phone\" is in GB, which is not among the countries codes are sent to"
    );
    // E-mail and Telegram have no country.
    t.post_ok("/email", json!({"email": "someone@example.com"}))
        .await;
}

#[tokio::test]
async fn the_daily_cap_refuses_sends_until_utc_midnight_and_refused_sends_do_not_count() {
    let t = TestApp::spawn_with(&["--daily-cap-sms", "3"]).await;
    assert!(
        t.post(
            "/limit/sms",
            json!({"phones": [{"minutes": 10, "rate": 1}]})
        )
        .await
        .ok()
    );
    t.post_ok("/sms", json!({"phone": "77011230001"})).await;
    // Refused by the per-phone limit after the cap counted it: it is given back.
    assert_eq!(
        t.post("/sms", json!({"phone": "77011230001"})).await.code(),
        "phone_limit"
    );
    t.post_ok("/sms", json!({"phone": "77011230002"})).await;
    t.post_ok("/sms", json!({"phone": "77011230003"})).await;
    let capped = t.post("/sms", json!({"phone": "77011230004"})).await;
    assert_eq!(capped.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        capped.body,
        json!({"status": false, "status_code": "daily_cap", "message": "the daily cap of sms codes is reached"})
    );
    let wait = secs_to_midnight(&t);
    assert_eq!(capped.headers["retry-after"], wait.to_string().as_str());
    // Other channels have their own (here none).
    t.post_ok("/call", json!({"phone": "77011230004"})).await;
    t.advance(wait);
    t.post_ok("/sms", json!({"phone": "77011230004"})).await;
    has(
        &metrics_of(&t).await,
        "otpd_abuse_refusals_total{channel=\"sms\",reason=\"daily_cap\"} 1",
    );
}

#[tokio::test]
async fn a_pumping_script_on_a_premium_range_and_on_one_country_is_stopped() {
    let t = TestApp::spawn_with(&["--daily-cap-sms-per-country", "50"]).await;
    // 1,000 numbers of one UK premium range: not one is sent.
    let premium = all_at_once(
        std::slice::from_ref(&t),
        1000,
        Method::POST,
        "/sms",
        |i| json!({"phone": format!("44909879{i:04}")}),
    )
    .await;
    assert!(
        premium.iter().all(|a| a == "invalid_parameter"),
        "{premium:?}"
    );
    // 1,000 Kazakh mobiles: the country's cap stops all but 50.
    let kazakh = all_at_once(
        std::slice::from_ref(&t),
        1000,
        Method::POST,
        "/sms",
        |i| json!({"phone": format!("7701200{i:04}")}),
    )
    .await;
    assert_eq!(kazakh.iter().filter(|a| *a == "success").count(), 50);
    assert_eq!(kazakh.iter().filter(|a| *a == "daily_cap").count(), 950);
    let a = t.post("/sms", json!({"phone": "77012009999"})).await;
    assert_eq!(
        a.body["message"],
        "the daily cap of sms codes to KZ is reached"
    );
    // Another country still gets its codes.
    t.post_ok("/sms", json!({"phone": "79123456789"})).await;
}

#[tokio::test]
async fn the_resend_cooldown_answers_the_target_limit_with_retry_after() {
    let t = TestApp::spawn_with(&["--resend-cooldown", "30"]).await;
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
    let refused = t.post("/sms", json!({"phone": KZ_MOBILE})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.body,
        json!({"status": false, "status_code": "phone_limit", "message": "Limits are reached: phone - 1 in 30 seconds"})
    );
    assert_eq!(refused.headers["retry-after"], "30");
    t.advance(12);
    assert_eq!(
        t.post("/sms", json!({"phone": KZ_MOBILE})).await.headers["retry-after"],
        "18"
    );
    // Other targets and channels are not held back.
    t.post_ok("/sms", json!({"phone": "77011230000"})).await;
    t.post_ok("/email", json!({"email": "a@example.com"})).await;
    t.advance(18);
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
}

#[tokio::test]
async fn a_target_out_of_its_wrong_guess_budget_is_refused_sends_and_checks_for_a_day() {
    let t = TestApp::spawn_with(&["--max-failures-per-target", "7"]).await;
    let phone = json!({"phone": KZ_MOBILE, "password": "123456"});
    let wrong = json!({"phone": KZ_MOBILE, "password": "000000"});
    // Send, guess four times, send again: the budget spans codes.
    t.post_ok("/sms", phone.clone()).await;
    for _ in 0..4 {
        assert_eq!(
            t.check_outcome("sms", wrong.clone()).await,
            "invalid_password"
        );
    }
    t.advance(60);
    t.post_ok("/sms", phone.clone()).await;
    for _ in 0..3 {
        assert_eq!(
            t.check_outcome("sms", wrong.clone()).await,
            "invalid_password"
        );
    }
    // Seven wrong guesses: even the right code is refused now, and so are sends.
    assert_eq!(
        t.check_outcome("sms", phone.clone()).await,
        "attempts_exceeded"
    );
    let refused = t.post("/sms", phone.clone()).await;
    assert_eq!(
        refused.body,
        json!({"status": false, "status_code": "phone_limit", "message": "Limits are reached: phone - 7 wrong passwords in 24 hours"})
    );
    assert_eq!(
        refused.headers["retry-after"],
        (86_400 - 60).to_string().as_str()
    );
    has(
        &metrics_of(&t).await,
        "otpd_abuse_refusals_total{channel=\"sms\",reason=\"failure_budget\"} 1",
    );
    // Another target is unaffected; a day after the first failure all is forgiven.
    assert!(t.post("/sms", json!({"phone": "77011230000"})).await.ok());
    t.advance(86_400 - 60);
    t.post_ok("/sms", phone.clone()).await;
    assert_eq!(t.check_outcome("sms", phone).await, "ok");
}

#[tokio::test]
async fn a_right_code_ends_a_run_of_wrong_guesses() {
    let t = TestApp::spawn_with(&["--max-failures-per-target", "3"]).await;
    let phone = json!({"phone": KZ_MOBILE, "password": "123456"});
    let wrong = json!({"phone": KZ_MOBILE, "password": "000000"});
    for _ in 0..3 {
        t.post_ok("/sms", phone.clone()).await;
        t.advance(150);
        for _ in 0..2 {
            assert_eq!(
                t.check_outcome("sms", wrong.clone()).await,
                "invalid_password"
            );
        }
        assert_eq!(t.check_outcome("sms", phone.clone()).await, "ok");
    }
}

#[tokio::test]
async fn ten_thousand_wrong_guesses_from_many_connections_get_no_further_than_max_attempts() {
    let t = TestApp::spawn().await;
    t.post_ok("/sms", json!({"phone": KZ_MOBILE, "password": "123456"}))
        .await;
    let answers = all_at_once(
        std::slice::from_ref(&t),
        10_000,
        Method::POST,
        "/sms/check",
        |i| json!({"phone": KZ_MOBILE, "password": format!("{:06}", 200_000 + i)}),
    )
    .await;
    assert_eq!(
        answers.iter().filter(|a| *a == "invalid_password").count(),
        5
    );
    assert_eq!(
        answers.iter().filter(|a| *a == "attempts_exceeded").count(),
        9_995
    );
    assert_eq!(
        t.check_outcome("sms", json!({"phone": KZ_MOBILE, "password": "123456"}))
            .await,
        "attempts_exceeded"
    );
}

#[tokio::test]
async fn test_targets_take_their_fixed_code_are_never_sent_and_never_limited() {
    let t = TestApp::spawn_with(&[
        "--test-targets",
        "sms:+7 999 000-00-00=123456,email:QA@Example.com=000000",
        "--daily-cap-sms",
        "1",
    ])
    .await;
    for _ in 0..10 {
        let created = t.post_ok("/sms", json!({"phone": "79990000000"})).await;
        // No delivery job exists for it: nothing can be sent.
        let job = t
            .get(&format!("/deliveries/{}", created["id"].as_str().unwrap()))
            .await;
        assert_eq!(job.status, StatusCode::NOT_FOUND);
    }
    let review = json!({"phone": "79990000000", "password": "123456"});
    let wrong = json!({"phone": "79990000000", "password": "654321"});
    for _ in 0..10 {
        assert_eq!(
            t.check_outcome("sms", wrong.clone()).await,
            "invalid_password"
        );
    }
    assert_eq!(t.check_outcome("sms", review.clone()).await, "ok");
    assert_eq!(t.check_outcome("sms", review).await, "ok");
    // The domain is case-blind, the local part is not.
    t.post_ok("/email", json!({"email": "QA@EXAMPLE.com"}))
        .await;
    assert_eq!(
        t.check_outcome(
            "email",
            json!({"email": "QA@example.com", "password": "000000"})
        )
        .await,
        "ok"
    );
    assert!(t.console.lines().is_empty(), "{:?}", t.console.lines());
    // The cap still holds for everyone else.
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
    assert_eq!(
        t.post("/sms", json!({"phone": "77011230000"})).await.code(),
        "daily_cap"
    );
}

#[tokio::test]
async fn bad_abuse_settings_stop_the_start_naming_the_variable() {
    for (args, expected) in [
        (
            &["--phone-countries-deny", "RU,XX"][..],
            "OTP_PHONE_COUNTRIES_DENY",
        ),
        (
            &["--test-targets", "sms:79990000000"][..],
            "OTP_TEST_TARGETS",
        ),
    ] {
        let error = TestApp::start_error(args).await;
        assert!(error.contains(expected), "{error}");
    }
}

/// `POST /sms` with an `Idempotency-Key`.
async fn sms_once(t: &TestApp, key: &str, body: serde_json::Value) -> crate::support::Answer {
    let res = t
        .client
        .post(format!("{}/sms", t.base))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap();
    crate::support::Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn a_repeat_with_the_same_idempotency_key_gets_the_first_answer_and_sends_once() {
    let t = TestApp::spawn().await;
    let body = json!({"phone": KZ_MOBILE, "password": "123456"});
    let first = sms_once(&t, "order-42", body.clone()).await;
    assert!(first.ok(), "{:?}", first.body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    // More repeats than the phone's send limit allows: none of them is a send.
    for _ in 0..6 {
        let again = sms_once(&t, "order-42", body.clone()).await;
        assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body));
        assert_eq!(again.headers["idempotent-replayed"], "true");
    }
    t.finished_delivery(first.body["content"]["id"].as_str().unwrap())
        .await;
    assert_eq!(t.console.lines().len(), 1);
    // The same key for another request is a conflict; another key is another send.
    let other = sms_once(
        &t,
        "order-42",
        json!({"phone": KZ_MOBILE, "password": "654321"}),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.code(), "idempotency_conflict");
    assert!(sms_once(&t, "order-43", body.clone()).await.ok());
    // A day later the key is forgotten.
    t.advance(24 * 3600 + 1);
    let later = sms_once(&t, "order-42", body).await;
    assert!(later.ok());
    assert_ne!(later.body["content"]["id"], first.body["content"]["id"]);
}

#[tokio::test]
async fn concurrent_repeats_of_one_idempotent_create_make_one_code() {
    let t = TestApp::spawn().await;
    let mut repeats = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url) = (t.client.clone(), format!("{}/sms", t.base));
        repeats.spawn(async move {
            let res = client
                .post(url)
                .header("idempotency-key", "burst")
                .json(&json!({"phone": KZ_MOBILE, "password": "123456"}))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = res.json().await.unwrap();
            body
        });
    }
    let answers = repeats.join_all().await;
    let ids: std::collections::BTreeSet<_> = answers
        .iter()
        .filter(|a| a["status"] == true)
        .map(|a| a["content"]["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a["status"] == true || a["status_code"] == "idempotency_in_progress"),
        "{answers:?}"
    );
    assert_eq!(t.delivery_states().len(), 1);
}

#[tokio::test]
async fn a_refused_create_frees_its_idempotency_key_for_a_later_try() {
    let t = TestApp::spawn_with(&["--resend-cooldown", "30"]).await;
    t.post_ok("/sms", json!({"phone": KZ_MOBILE})).await;
    let body = json!({"phone": KZ_MOBILE, "password": "123456"});
    let refused = sms_once(&t, "retry-me", body.clone()).await;
    assert_eq!(refused.code(), "phone_limit");
    t.advance(30);
    assert!(sms_once(&t, "retry-me", body).await.ok());
    let bad = sms_once(&t, &"k".repeat(256), json!({"phone": KZ_MOBILE})).await;
    assert_eq!(
        bad.body["message"],
        "\"Idempotency-Key\" must be 1 to 255 visible ASCII characters"
    );
}

async fn send_kz(t: &TestApp, n: usize, ip: Option<&str>) -> crate::support::Answer {
    let mut body = json!({"phone": format!("7701300{n:04}"), "password": "123456"});
    if let Some(ip) = ip {
        body["ip"] = ip.into();
    }
    t.post("/sms", body).await
}

async fn verify_kz(t: &TestApp, n: usize) {
    let body = json!({"phone": format!("7701300{n:04}"), "password": "123456"});
    assert_eq!(t.check_outcome("sms", body).await, "ok");
}

const PUMPING: [&str; 4] = ["--pumping-min-sends", "20", "--pumping-max-ratio", "5"];

#[tokio::test]
async fn the_pumping_detector_blocks_a_country_whose_codes_are_not_verified() {
    let t = TestApp::spawn_with(&PUMPING)
        .await
        .replica_with(&["--pumping-mode", "block"])
        .await;
    for n in 0..20 {
        assert!(send_kz(&t, n, None).await.ok());
    }
    let held = send_kz(&t, 20, None).await;
    assert_eq!(held.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        held.body,
        json!({"status": false, "status_code": "pumping_suspected", "message": "codes to this country are held back: many are sent and few are verified"})
    );
    // Another country is not held back.
    t.post_ok("/sms", json!({"phone": "79123456789"})).await;
    // Four verified codes bring 20 sends down to the ratio of 5: sends flow again.
    for n in 0..4 {
        verify_kz(&t, n).await;
    }
    assert!(send_kz(&t, 21, None).await.ok());
    let metrics = metrics_of(&t).await;
    has(
        &metrics,
        "otpd_pumping_suspected_total{channel=\"sms\",scope=\"country\",mode=\"block\"} 1",
    );
    has(
        &metrics,
        "otpd_abuse_refusals_total{channel=\"sms\",reason=\"pumping\"} 1",
    );
}

#[tokio::test]
async fn the_pumping_detector_watches_end_user_ips_and_in_record_mode_refuses_nothing() {
    let t = TestApp::spawn_with(&PUMPING)
        .await
        .replica_with(&["--pumping-mode", "block"])
        .await;
    for n in 0..20 {
        assert!(send_kz(&t, n, Some("203.0.113.7")).await.ok());
    }
    // The country's codes are verified, but not by checks from that ip.
    for n in 0..20 {
        verify_kz(&t, n).await;
    }
    let held = send_kz(&t, 20, Some("203.0.113.7")).await;
    assert_eq!(
        held.body["message"],
        "codes to this ip are held back: many are sent and few are verified"
    );
    assert!(send_kz(&t, 21, Some("198.51.100.1")).await.ok());

    let recording = TestApp::spawn_with(&PUMPING)
        .await
        .replica_with(&["--pumping-mode", "record"])
        .await;
    for n in 0..22 {
        assert!(send_kz(&recording, n, None).await.ok());
    }
    has(
        &metrics_of(&recording).await,
        "otpd_pumping_suspected_total{channel=\"sms\",scope=\"country\",mode=\"record\"} 2",
    );
}
