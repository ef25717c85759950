//! Send limits per target and per IP, their answers, and rules set at run time.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Answer, TestApp};

async fn sms(t: &TestApp, phone: &str, ip: Option<&str>) -> Answer {
    let mut body = json!({"phone": phone, "password": "12345"});
    if let Some(ip) = ip {
        body["ip"] = Value::from(ip);
    }
    t.post("/sms", body).await
}

#[tokio::test]
async fn default_is_five_sends_per_target_in_ten_minutes() {
    let t = TestApp::spawn().await;
    for _ in 0..5 {
        assert!(sms(&t, "77011234567", None).await.ok());
        t.advance(10);
    }
    let refused = sms(&t, "77011234567", None).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.body,
        json!({"status": false, "status_code": "phone_limit", "message": "Limits are reached: phone - 5 in 10 minutes"})
    );
    // The first send (50 s ago) leaves the window in 550 s.
    assert_eq!(refused.headers["retry-after"], "550");
    // Other targets are not affected.
    assert!(sms(&t, "77011230000", None).await.ok());
}

#[tokio::test]
async fn refused_sends_do_not_count() {
    let t = TestApp::spawn().await;
    let rules = t
        .post(
            "/limit/sms",
            json!({"phones": [{"minutes": 10, "rate": 2}]}),
        )
        .await;
    assert!(rules.ok());
    assert!(sms(&t, "77011234567", None).await.ok()); // t = 0
    t.advance(60);
    assert!(sms(&t, "77011234567", None).await.ok()); // t = 60
    t.advance(60);
    let refused = sms(&t, "77011234567", None).await; // t = 120
    assert_eq!(refused.code(), "phone_limit");
    assert_eq!(refused.headers["retry-after"], "480");
    t.advance(10);
    assert_eq!(sms(&t, "77011234567", None).await.code(), "phone_limit"); // t = 130
    t.advance(471); // t = 601: the first send has left the window; the refusals never counted
    assert!(sms(&t, "77011234567", None).await.ok());
    let refused = sms(&t, "77011234567", None).await;
    assert_eq!(refused.headers["retry-after"], "59");
}

#[tokio::test]
async fn each_channel_answers_with_its_own_limit_code() {
    let t = TestApp::spawn().await;
    for (channel, body, code) in [
        (
            "call",
            json!({"phone": "77011234567", "password": "1"}),
            "phone_limit",
        ),
        (
            "email",
            json!({"email": "a@example.com", "password": "1"}),
            "email_limit",
        ),
        (
            "telegram",
            json!({"chat_id": "42", "password": "1"}),
            "chat_id_limit",
        ),
    ] {
        let key = match channel {
            "email" => "emails",
            "telegram" => "chat_ids",
            _ => "phones",
        };
        t.post_ok(
            &format!("/limit/{channel}"),
            json!({key: [{"minutes": 1, "rate": 1}]}),
        )
        .await;
        t.post_ok(&format!("/{channel}"), body.clone()).await;
        let refused = t.post(&format!("/{channel}"), body).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::BAD_REQUEST, code),
            "{channel}"
        );
        assert!(refused.headers.contains_key("retry-after"));
    }
    // Limits of one channel do not touch another: sms still has its default.
    assert!(sms(&t, "77011234567", None).await.ok());
}

#[tokio::test]
async fn ip_rules_require_an_ip_and_limit_per_ip() {
    let t = TestApp::spawn().await;
    let set = t
        .post("/limit/sms", json!({"ips": [{"minutes": 10, "rate": 2}]}))
        .await;
    assert_eq!(
        set.body,
        json!({"status": true, "content": {"ips": [{"minutes": 10, "rate": 2}], "phones": [{"minutes": 10, "rate": 5}]}})
    );
    let missing = sms(&t, "77011234567", None).await;
    assert_eq!(
        missing.body,
        json!({"status": false, "status_code": "missing_parameter", "message": "\"ip\" parameter must be set"})
    );
    let bad = sms(&t, "77011234567", Some("999.1.1.1")).await;
    assert_eq!(bad.code(), "invalid_parameter");

    assert!(sms(&t, "77011234567", Some("10.0.0.1")).await.ok());
    assert!(sms(&t, "77011230000", Some("10.0.0.1")).await.ok());
    let refused = sms(&t, "77011231111", Some("10.0.0.1")).await;
    assert_eq!(
        refused.body,
        json!({"status": false, "status_code": "ip_limit", "message": "Limits are reached: ip - 2 in 10 minutes"})
    );
    assert_eq!(refused.headers["retry-after"], "600");
    assert!(sms(&t, "77011231111", Some("2001:db8::1")).await.ok());
    // The same IPv6 address spelled differently is the same address.
    assert!(sms(&t, "77011232222", Some("2001:0db8:0::1")).await.ok());
    assert_eq!(
        sms(&t, "77011233333", Some("2001:db8::1")).await.code(),
        "ip_limit"
    );
}

#[tokio::test]
async fn rules_are_replaced_cleared_and_validated() {
    let t = TestApp::spawn().await;
    let shown = t.get("/limit/email").await;
    assert_eq!(
        shown.body,
        json!({"status": true, "content": {"ips": [], "emails": [{"minutes": 10, "rate": 5}]}})
    );

    // A present key replaces that set only; numbers may be text.
    let a = t
        .post(
            "/limit/email",
            json!({"emails": [{"minutes": "1", "rate": "1"}, {"minutes": 60, "rate": 3}]}),
        )
        .await;
    assert_eq!(
        a.body["content"]["emails"],
        json!([{"minutes": 1, "rate": 1}, {"minutes": 60, "rate": 3}])
    );
    assert_eq!(a.body["content"]["ips"], json!([]));
    // [] clears it: no per-target limit at all.
    let a = t.post("/limit/email", json!({"emails": []})).await;
    assert_eq!(a.body["content"]["emails"], json!([]));
    for _ in 0..8 {
        t.post_ok("/email", json!({"email": "a@example.com", "password": "1"}))
            .await;
    }

    for (body, field) in [
        (json!({"emails": [{"minutes": 0, "rate": 1}]}), "emails"),
        (json!({"emails": [{"minutes": 1}]}), "emails"),
        (json!({"emails": {"minutes": 1, "rate": 1}}), "emails"),
        (json!({"ips": "nonsense"}), "ips"),
        (json!({"ips": [{"minutes": -1, "rate": 1}]}), "ips"),
        (json!({"phones": [{"minutes": 1, "rate": 1}]}), "phones"),
    ] {
        let a = t.post("/limit/email", body.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_parameter"),
            "{body}"
        );
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("\"{field}\"")),
            "{:?}",
            a.body
        );
    }
    let a = t.post("/limit/email", json!({})).await;
    assert_eq!(
        a.body["message"],
        "\"ips\" or \"emails\" parameter must be set"
    );
    // Nothing above changed the rules.
    assert_eq!(
        t.get("/limit/email").await.body["content"]["emails"],
        json!([])
    );
}

#[tokio::test]
async fn rules_survive_a_restart() {
    let t = TestApp::spawn().await;
    t.post_ok(
        "/limit/telegram",
        json!({"ips": [{"minutes": 5, "rate": 1}], "chat_ids": [{"minutes": 30, "rate": 2}]}),
    )
    .await;
    t.post_ok(
        "/telegram",
        json!({"chat_id": "7", "password": "1", "ip": "192.0.2.1"}),
    )
    .await;
    let t = t.restart().await;
    assert_eq!(
        t.get("/limit/telegram").await.body["content"],
        json!({"ips": [{"minutes": 5, "rate": 1}], "chat_ids": [{"minutes": 30, "rate": 2}]})
    );
    // And the sends recorded before the restart still count.
    let refused = t
        .post(
            "/telegram",
            json!({"chat_id": "8", "password": "1", "ip": "192.0.2.1"}),
        )
        .await;
    assert_eq!(refused.code(), "ip_limit");
}
