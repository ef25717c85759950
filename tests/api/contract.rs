//! The brief's API as written, and every row of the answer table in DESIGN §2.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

fn brief_create(channel: &str) -> serde_json::Value {
    match channel {
        "sms" | "call" => {
            json!({"phone": "77011234567", "password": "12345", "lifetime": 300, "message": "Your OTP is 12345"})
        }
        "email" => {
            json!({"email": "foobar@example.com", "password": "12345", "lifetime": 300, "subject": "Hello", "text": "Your OTP is 12345"})
        }
        _ => {
            json!({"chat_id": "1234567890", "password": "12345", "lifetime": 300, "message": "Your OTP is 12345"})
        }
    }
}

fn brief_check(channel: &str) -> serde_json::Value {
    match channel {
        "sms" | "call" => json!({"phone": "77011234567", "password": "12345"}),
        "email" => json!({"email": "foobar@example.com", "password": "12345"}),
        _ => json!({"chat_id": "1234567890", "password": "12345"}),
    }
}

#[tokio::test]
async fn the_briefs_examples_work_as_written_on_every_channel() {
    let t = TestApp::spawn().await;
    for channel in ["sms", "call", "email", "telegram"] {
        let created = t.post(&format!("/{channel}"), brief_create(channel)).await;
        assert!(created.ok(), "{channel}: {:?}", created.body);
        let id = created.body["content"]["id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        let expected_expiry = otpd::clock::Timestamp::from_millis(
            otpd::clock::Clock::now(&*t.clock).millis() + 300_000,
        )
        .to_rfc3339();
        assert_eq!(
            created.body["content"]["expires_at"],
            expected_expiry.as_str()
        );

        let delivery = t.finished_delivery(id).await;
        assert_eq!(delivery["state"], "sent");
        assert_eq!(delivery["provider"], "console");
        assert_eq!(delivery["attempts"], 1);
        assert_eq!(delivery["channel"], channel);

        let checked = t
            .get_with_body(&format!("/{channel}/check"), brief_check(channel))
            .await;
        assert_eq!(checked.status, StatusCode::OK);
        assert_eq!(checked.body, json!({"status": true}), "{channel}");
        assert_eq!(checked.headers["content-type"], "application/json");
    }
    let lines = t.console.lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines[0],
        "otpd console: sms to 77011234567: Your OTP is 12345"
    );
    assert_eq!(
        lines[1],
        "otpd console: call to 77011234567: Your OTP is 12345"
    );
    assert_eq!(
        lines[2],
        "otpd console: email to foobar@example.com: subject=\"Hello\" text=\"Your OTP is 12345\""
    );
    assert_eq!(
        lines[3],
        "otpd console: telegram to 1234567890: Your OTP is 12345"
    );
}

#[tokio::test]
async fn query_strings_and_form_bodies_work_on_get_and_post() {
    let t = TestApp::spawn().await;
    let a = t
        .send(Method::POST, "/sms?phone=77011234567&password=11111", None)
        .await;
    assert!(a.ok(), "{:?}", a.body);
    let a = t.get("/sms/check?phone=77011234567&password=11111").await;
    assert_eq!(a.body, json!({"status": true}));

    let form = (
        "application/x-www-form-urlencoded",
        "phone=%2B7+701+123+45+67&password=22222&lifetime=60".to_string(),
    );
    assert!(t.send(Method::POST, "/call", Some(form)).await.ok());
    let form = (
        "application/x-www-form-urlencoded",
        "phone=77011234567&password=22222".to_string(),
    );
    assert!(t.send(Method::POST, "/call/check", Some(form)).await.ok());

    // POST on check with JSON, GET on check with a query string: both methods, both forms.
    t.post_ok(
        "/email",
        json!({"email": "a@example.com", "password": "33333"}),
    )
    .await;
    t.post_ok(
        "/email/check",
        json!({"email": "a@example.com", "password": "33333"}),
    )
    .await;
}

#[tokio::test]
async fn body_keys_win_over_the_query_string() {
    let t = TestApp::spawn().await;
    let a = t
        .send(
            Method::POST,
            "/sms?phone=70000000000&password=99999",
            Some((
                "application/json",
                json!({"phone": "77011234567"}).to_string(),
            )),
        )
        .await;
    assert!(a.ok());
    assert!(
        t.get_with_body(
            "/sms/check",
            json!({"phone": "77011234567", "password": "99999"})
        )
        .await
        .ok()
    );
    let other = t
        .get_with_body(
            "/sms/check",
            json!({"phone": "70000000000", "password": "99999"}),
        )
        .await;
    assert_eq!(other.code(), "invalid_password");
}

#[tokio::test]
async fn a_json_body_is_read_whatever_the_content_type_says() {
    let t = TestApp::spawn().await;
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let a = t
            .send(
                Method::POST,
                "/sms",
                Some((
                    ct,
                    json!({"phone": "77011234567", "password": "55555"}).to_string(),
                )),
            )
            .await;
        assert!(a.ok(), "{ct}: {:?}", a.body);
    }
}

#[tokio::test]
async fn strings_are_trimmed_empty_is_absent_numbers_may_be_text() {
    let t = TestApp::spawn().await;
    let a = t
        .post("/sms", json!({"phone": "  77011234567 ", "password": " 4321 ", "lifetime": "120", "message": ""}))
        .await;
    assert!(a.ok(), "{:?}", a.body);
    assert!(
        t.get_with_body(
            "/sms/check",
            json!({"phone": "77011234567", "password": "4321"})
        )
        .await
        .ok()
    );

    // A numeric chat_id, and an empty password meaning "generate one".
    let code = t
        .create_and_read_code("telegram", json!({"chat_id": 1234567890, "password": ""}))
        .await;
    assert_eq!(code.len(), 6);
    assert!(
        t.get_with_body(
            "/telegram/check",
            json!({"chat_id": 1234567890, "password": code})
        )
        .await
        .ok()
    );

    let a = t.post("/sms", json!({"phone": ""})).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "missing_parameter")
    );
}

#[tokio::test]
async fn missing_fields_are_named_in_the_briefs_words() {
    let t = TestApp::spawn().await;
    for (path, field) in [
        ("/sms", "phone"),
        ("/call", "phone"),
        ("/email", "email"),
        ("/telegram", "chat_id"),
        ("/sms/check", "phone"),
        ("/email/check", "email"),
        ("/telegram/check", "chat_id"),
        ("/call/check", "phone"),
    ] {
        let a = t.post(path, json!({})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            a.body,
            json!({"status": false, "status_code": "missing_parameter", "message": format!("\"{field}\" parameter must be set")}),
            "{path}"
        );
    }
    let a = t.post("/sms/check", json!({"phone": "77011234567"})).await;
    assert_eq!(a.body["message"], "\"password\" parameter must be set");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let t = TestApp::spawn().await;
    let a = t.get("/nowhere").await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(a.headers["content-type"], "application/json");
    let a = t.get("/sms").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let a = t.send(Method::DELETE, "/sms/check", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = t.post("/limit/fax", json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_over_64_kib_are_refused_with_413() {
    let t = TestApp::spawn().await;
    let big = json!({"phone": "77011234567", "message": "x".repeat(70 * 1024)}).to_string();
    let a = t
        .send(Method::POST, "/sms", Some(("application/json", big)))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // Just under the limit is read (and then refused for the message length, not size).
    let fits = json!({"phone": "77011234567", "password": "1", "message": "x".repeat(60 * 1024)})
        .to_string();
    let a = t
        .send(Method::POST, "/sms", Some(("application/json", fits)))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "invalid_parameter")
    );
    assert!(t.console.lines().is_empty());
    // Routes that never read a body refuse an oversized one all the same.
    let a = t
        .send(
            Method::GET,
            "/limit/sms",
            Some(("application/json", "x".repeat(100 * 1024))),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn health_ready_and_deliveries() {
    let t = TestApp::spawn().await;
    assert_eq!(t.get("/health").await.body, json!({"status": true}));
    assert_eq!(t.get("/ready").await.body, json!({"status": true}));

    let unknown = t.get("/deliveries/00000000000000000000000000000000").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    for bad in ["not-an-id", "%FF%FE", "0000000000000000000000000000000G"] {
        let malformed = t.get(&format!("/deliveries/{bad}")).await;
        assert_eq!(
            (malformed.status, malformed.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{bad}"
        );
    }

    let created = t.post("/email", json!({"email": "x@example.com"})).await;
    let id = created.body["content"]["id"].as_str().unwrap();
    let d = t.finished_delivery(id).await;
    assert_eq!(d["id"], id);
    assert_eq!(d["state"], "sent");
    assert_eq!(d["channel"], "email");
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(d.get("error").is_none());
    // The job shows no message and no target: it holds the code.
    assert!(d.get("target").is_none() && d.get("message").is_none());
}

#[tokio::test]
async fn a_locked_store_answers_503_and_service_resumes_when_released() {
    let t = TestApp::spawn().await;
    if !t.sqlite_only("a_locked_store_answers_503") {
        return;
    }
    // An operator's sqlite3 session holding the write lock.
    let other = rusqlite::Connection::open(t.db_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let a = t
        .post("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
    assert!(a.headers.contains_key("retry-after"));
    assert!(
        !a.body["message"].as_str().unwrap().contains("lock"),
        "no internal detail: {:?}",
        a.body
    );
    let ready = t.get("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(t.get("/health").await.status, StatusCode::OK);
    other.execute_batch("ROLLBACK").unwrap();

    assert!(t.get("/ready").await.ok());
    // The refused create left nothing behind; a new one works.
    let check = t
        .get_with_body(
            "/sms/check",
            json!({"phone": "77011234567", "password": "12345"}),
        )
        .await;
    assert_eq!(check.code(), "invalid_password");
    t.post_ok("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
}

#[tokio::test]
async fn corrupt_state_is_a_500_that_reveals_nothing() {
    let t = TestApp::spawn().await;
    t.corrupt_limit_rules("sms");
    let a = t
        .post("/sms", json!({"phone": "77011234567", "password": "12345"}))
        .await;
    assert_eq!(
        (a.status, a.body.clone()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": false, "status_code": "internal", "message": "internal error"})
        )
    );
    // Other channels are unaffected.
    t.post_ok(
        "/call",
        json!({"phone": "77011234567", "password": "12345"}),
    )
    .await;
}
