//! DESIGN §3: hashing, single use, several live codes, attempts, generation, expiry.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestApp;

async fn check(t: &TestApp, phone: &str, password: &str) -> String {
    t.check_outcome("sms", json!({"phone": phone, "password": password}))
        .await
}

#[tokio::test]
async fn a_code_is_single_use() {
    let t = TestApp::spawn().await;
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    assert_eq!(check(&t, "77011234567", "12345").await, "ok");
    assert_eq!(check(&t, "77011234567", "12345").await, "invalid_password");
}

#[tokio::test]
async fn older_live_codes_still_work_up_to_max_active_and_success_spends_them_all() {
    let t = TestApp::spawn().await;
    for code in ["1111", "2222", "3333", "4444"] {
        t.post_ok("/sms", json!({"phone": "77011234567", "password": code}))
            .await;
    }
    // OTP_MAX_ACTIVE_CODES = 3: the first was dropped, the second still works...
    assert_eq!(check(&t, "77011234567", "1111").await, "invalid_password");
    assert_eq!(check(&t, "77011234567", "2222").await, "ok");
    // ...and using it spent the newer ones too.
    assert_eq!(check(&t, "77011234567", "4444").await, "invalid_password");
}

#[tokio::test]
async fn max_active_codes_is_a_setting() {
    let t = TestApp::spawn_with(&["--max-active-codes", "1"]).await;
    for code in ["1111", "2222"] {
        t.post_ok("/sms", json!({"phone": "77011234567", "password": code}))
            .await;
    }
    assert_eq!(check(&t, "77011234567", "1111").await, "invalid_password");
    assert_eq!(check(&t, "77011234567", "2222").await, "ok");
}

#[tokio::test]
async fn wrong_guesses_burn_the_codes_until_a_new_send() {
    let t = TestApp::spawn().await;
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    for _ in 0..5 {
        assert_eq!(check(&t, "77011234567", "00000").await, "invalid_password");
    }
    // Even the right code is refused now.
    assert_eq!(check(&t, "77011234567", "12345").await, "attempts_exceeded");
    assert_eq!(check(&t, "77011234567", "00000").await, "attempts_exceeded");
    // Another target is not affected.
    t.post_ok("/sms", json!({"phone": "77011230000", "password": "12345"}))
        .await;
    assert_eq!(check(&t, "77011230000", "12345").await, "ok");
    // A new send starts over.
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "54321"}))
        .await;
    assert_eq!(check(&t, "77011234567", "00000").await, "invalid_password");
    assert_eq!(check(&t, "77011234567", "54321").await, "ok");
}

#[tokio::test]
async fn max_attempts_is_a_setting() {
    let t = TestApp::spawn_with(&["--max-attempts", "2"]).await;
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    assert_eq!(check(&t, "77011234567", "1").await, "invalid_password");
    assert_eq!(check(&t, "77011234567", "2").await, "invalid_password");
    assert_eq!(check(&t, "77011234567", "12345").await, "attempts_exceeded");
}

#[tokio::test]
async fn every_spelling_of_a_target_is_one_target() {
    let t = TestApp::spawn().await;
    t.post_ok(
        "/sms",
        json!({"phone": "+7 (701) 123-45-67", "password": "12345"}),
    )
    .await;
    assert_eq!(check(&t, "77011234567", "12345").await, "ok");

    t.post_ok(
        "/email",
        json!({"email": " Foo@EXAMPLE.com ", "password": "777"}),
    )
    .await;
    let a = t
        .get_with_body(
            "/email/check",
            json!({"email": "Foo@example.COM", "password": "777"}),
        )
        .await;
    assert!(a.ok());

    t.post_ok(
        "/telegram",
        json!({"chat_id": "-1001234567890", "password": "5"}),
    )
    .await;
    let a = t
        .get_with_body(
            "/telegram/check",
            json!({"chat_id": -1001234567890i64, "password": "5"}),
        )
        .await;
    assert!(a.ok());
}

#[tokio::test]
async fn channels_keep_their_codes_apart() {
    let t = TestApp::spawn().await;
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    let a = t
        .get_with_body(
            "/call/check",
            json!({"phone": "77011234567", "password": "12345"}),
        )
        .await;
    assert_eq!(a.code(), "invalid_password");
    assert_eq!(check(&t, "77011234567", "12345").await, "ok");
}

#[tokio::test]
async fn a_missing_password_is_generated_and_put_into_the_message() {
    let t = TestApp::spawn().await;
    let code = t
        .create_and_read_code("sms", json!({"phone": "77011234567"}))
        .await;
    assert_eq!(code.len(), 6);
    assert_eq!(
        t.console.lines().last().unwrap(),
        &format!("otpd console: sms to 77011234567: Your code is {code}")
    );
    assert_eq!(check(&t, "77011234567", &code).await, "ok");

    let code = t
        .create_and_read_code(
            "call",
            json!({"phone": "77011234567", "message": "Code {password}, again {password}."}),
        )
        .await;
    // A voice reads the digits one by one.
    let spoken = code.chars().map(String::from).collect::<Vec<_>>().join(" ");
    assert_eq!(code.len(), 6);
    assert_eq!(
        t.console.lines().last().unwrap(),
        &format!("otpd console: call to 77011234567: Code {spoken}, again {spoken}.")
    );

    let code = t
        .create_and_read_code("email", json!({"email": "a@example.com", "subject": "Hi", "text": "Use {password}", "html": "<b>{password}</b>"}))
        .await;
    assert_eq!(
        t.console.lines().last().unwrap(),
        &format!(
            "otpd console: email to a@example.com: subject=\"Hi\" text=\"Use {code}\" html=\"<b>{code}</b>\""
        )
    );
}

#[tokio::test]
async fn generated_code_length_is_a_setting() {
    let t = TestApp::spawn_with(&["--code-length", "8"]).await;
    let code = t
        .create_and_read_code("telegram", json!({"chat_id": "42"}))
        .await;
    assert_eq!(code.len(), 8);
}

#[tokio::test]
async fn a_generated_code_needs_a_placeholder_in_the_given_message() {
    let t = TestApp::spawn().await;
    let a = t
        .post("/sms", json!({"phone": "77011234567", "message": "Hello"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "invalid_parameter")
    );
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .starts_with("\"message\"")
    );
    let a = t
        .post("/email", json!({"email": "a@example.com", "text": "Hello"}))
        .await;
    assert!(a.body["message"].as_str().unwrap().starts_with("\"text\""));
    // With a supplied password the message is the caller's business.
    t.post_ok(
        "/sms",
        json!({"phone": "77011234567", "message": "Hello", "password": "1"}),
    )
    .await;
}

/// The code hashes SQLite holds: each target's row keeps its codes as 40-byte entries
/// (a 32-byte hash and an 8-byte expiry).
fn stored_code_hashes(t: &TestApp) -> i64 {
    t.db_value(
        "SELECT coalesce(sum(length(codes)), 0) / 40 FROM targets",
        [],
    )
}

#[tokio::test]
async fn expired_codes_answer_invalid_password_and_are_purged() {
    let t = TestApp::spawn().await;
    for (phone, lifetime) in [
        ("77011234567", 60),
        ("77011230000", 60),
        ("77011231111", 600),
    ] {
        let body = json!({"phone": phone, "password": "12345", "lifetime": lifetime});
        t.post_ok("/sms", body).await;
    }
    t.advance(59);
    assert_eq!(check(&t, "77011230000", "12345").await, "ok");
    t.advance(2);
    assert_eq!(check(&t, "77011234567", "12345").await, "invalid_password");

    // SQLite's purger deletes rows; Redis lets keys expire by themselves.
    if t.sqlite_only("expired_codes_are_purged") {
        let count = || stored_code_hashes(&t);
        assert_eq!(count(), 2);
        assert!(t.app().purge_expired().await.unwrap() >= 1);
        assert_eq!(count(), 1, "only the live code is left");
    }
    assert_eq!(check(&t, "77011231111", "12345").await, "ok");
}

#[tokio::test]
async fn the_background_purger_removes_expired_codes() {
    let t = TestApp::spawn().await;
    if !t.sqlite_only("the_background_purger_removes_expired_codes") {
        return;
    }
    for phone in ["77011234567", "77011230000"] {
        let body = json!({"phone": phone, "password": "12345", "lifetime": 30});
        t.post_ok("/sms", body).await;
    }
    t.advance(31);
    // The purger sweeps once as it starts, then every OTP_PURGE_INTERVAL.
    let t = t.restart().await;
    let mut left = -1;
    for _ in 0..500 {
        left = stored_code_hashes(&t);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0);
}

#[tokio::test]
async fn codes_are_stored_only_as_hashes_and_messages_are_erased_after_delivery() {
    let t = TestApp::spawn().await;
    let a = t
        .post(
            "/sms",
            json!({"phone": "77011234567", "password": "918273", "message": "Code 918273"}),
        )
        .await;
    t.finished_delivery(a.body["content"]["id"].as_str().unwrap())
        .await;
    let id = a.body["content"]["id"].as_str().unwrap();
    let stored = t.raw_contents();
    assert!(!stored.is_empty());
    assert!(!stored.contains("918273"), "{stored}");
    assert_eq!(t.stored_message(id), None);
}

#[tokio::test]
async fn the_generated_secret_is_kept_beside_the_database_with_mode_0600() {
    let t = TestApp::spawn().await;
    if !t.sqlite_only("the_generated_secret_is_kept_beside_the_database") {
        return;
    }
    let path = t.dir.path().join("otpd.secret");
    let meta = std::fs::metadata(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert!(std::fs::read_to_string(&path).unwrap().len() >= 32);
}
