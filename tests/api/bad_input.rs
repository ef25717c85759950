//! Hostile and malformed input: always a 400 naming the problem, never a 500, never a
//! change to stored state.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn every_bad_input_is_a_400_naming_the_field_and_stores_nothing() {
    let t = TestApp::spawn().await;
    let long_phone = "7".repeat(10 * 1024);
    let raw = |path: &'static str, ct: &'static str, body: &str| (path, ct, body.to_string());
    let json_ct = "application/json";
    let cases: Vec<((&str, &str, String), &str, &str)> = vec![
        // (request, status_code, what the message must mention)
        (
            raw("/sms", json_ct, "{\"phone\": \"77011234567\""),
            "invalid_body",
            "",
        ),
        (raw("/sms", json_ct, "[1, 2, 3]"), "invalid_body", ""),
        (raw("/sms", json_ct, "\"77011234567\""), "invalid_body", ""),
        (
            raw("/sms", json_ct, "{\"phone\": \"77011234567\"} trailing"),
            "invalid_body",
            "",
        ),
        (
            raw("/sms", "text/plain", "phone=77011234567"),
            "invalid_body",
            "",
        ),
        (raw("/sms", json_ct, &"[".repeat(1000)), "invalid_body", ""),
        (
            raw("/sms", json_ct, "{\"phone\": true}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, "{\"phone\": [77011234567]}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, "{\"phone\": 7.7011234567e10}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, &format!("{{\"phone\": \"{long_phone}\"}}")),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, "{\"phone\": \"٧٧٠١١٢٣٤٥٦٧\"}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, "{\"phone\": \"７７０１１２３４５６７\"}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw("/sms", json_ct, "{\"phone\": \"1' OR '1'='1\"}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567; DROP TABLE codes\"}",
            ),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"phone\": \"77011230000\"}",
            ),
            "invalid_parameter",
            "\"phone\" is given more than once",
        ),
        (
            raw("/sms?phone=1&phone=2", json_ct, ""),
            "invalid_parameter",
            "\"phone\" is given more than once",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": -1}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": 0}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": 86401}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": 99999999999999999999999}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": 1e30}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": 2.5}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": \"five\"}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"lifetime\": {}}",
            ),
            "invalid_parameter",
            "\"lifetime\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                &format!(
                    "{{\"phone\": \"77011234567\", \"password\": \"{}\"}}",
                    "9".repeat(65)
                ),
            ),
            "invalid_parameter",
            "\"password\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"password\": \"12\\u000034\"}",
            ),
            "invalid_parameter",
            "\"password\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"ip\": \"localhost\"}",
            ),
            "invalid_parameter",
            "\"ip\"",
        ),
        (
            raw(
                "/sms",
                json_ct,
                "{\"phone\": \"77011234567\", \"password\": \"1\", \"message\": 5}",
            ),
            "invalid_parameter",
            "\"message\"",
        ),
        (
            raw("/email", json_ct, "{\"email\": \"not-an-address\"}"),
            "invalid_parameter",
            "\"email\"",
        ),
        (
            raw(
                "/email",
                json_ct,
                "{\"email\": \"a@example.com\", \"subject\": \"Hi\\r\\nBcc: evil@example.com\"}",
            ),
            "invalid_parameter",
            "\"subject\"",
        ),
        (
            raw(
                "/email",
                json_ct,
                "{\"email\": \"x@example.com'); DELETE FROM codes; --\"}",
            ),
            "invalid_parameter",
            "\"email\"",
        ),
        (
            raw("/telegram", json_ct, "{\"chat_id\": \"12abc\"}"),
            "invalid_parameter",
            "\"chat_id\"",
        ),
        (
            raw("/telegram", json_ct, "{\"chat_id\": 1.5}"),
            "invalid_parameter",
            "\"chat_id\"",
        ),
        (
            raw(
                "/telegram",
                json_ct,
                "{\"chat_id\": \"99999999999999999999\"}",
            ),
            "invalid_parameter",
            "\"chat_id\"",
        ),
        (
            raw(
                "/sms/check",
                json_ct,
                "{\"phone\": \"77011234567\", \"password\": {\"$ne\": 1}}",
            ),
            "invalid_parameter",
            "\"password\"",
        ),
    ];
    let more: Vec<((&str, &str, String), &str, &str)> = vec![
        (
            raw("/sms", json_ct, "{\"phone\": -77011234567}"),
            "invalid_parameter",
            "\"phone\"",
        ),
        (
            raw(
                "/email",
                json_ct,
                "{\"email\": \"a@example.com\", \"password\": \"1\", \"subject\": 7}",
            ),
            "invalid_parameter",
            "\"subject\"",
        ),
    ];
    for ((path, ct, body), code, mention) in cases.into_iter().chain(more) {
        let a = t.send(Method::POST, path, Some((ct, body.clone()))).await;
        let shown: String = body.chars().take(80).collect();
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, code),
            "{path} {shown}: {:?}",
            a.body
        );
        assert_eq!(a.body["status"], false);
        assert!(
            a.body["message"].as_str().unwrap().contains(mention),
            "{shown}: {:?}",
            a.body
        );
    }

    // Nothing was stored or sent, and the server is still well.
    assert_eq!(t.raw_contents(), "");
    assert!(t.console.lines().is_empty());
    assert!(t.get("/ready").await.ok());
}

#[tokio::test]
async fn hostile_text_in_messages_is_stored_and_sent_verbatim() {
    let t = TestApp::spawn().await;
    let message = "Code {password}'; DROP TABLE codes; -- \u{1F600} \"quoted\"";
    let code = t
        .create_and_read_code("sms", json!({"phone": "77011234567", "message": message}))
        .await;
    let line = t.console.lines().pop().unwrap();
    assert_eq!(
        line,
        format!(
            "otpd console: sms to 77011234567: Code {code}'; DROP TABLE codes; -- \u{1F600} \"quoted\""
        )
    );
    // A line break in a message cannot forge a second console line.
    let a = t
        .post(
            "/sms",
            json!({"phone": "77011230000", "password": "1", "message": "a\notpd console: fake"}),
        )
        .await;
    t.finished_delivery(a.body["content"]["id"].as_str().unwrap())
        .await;
    assert_eq!(
        t.console.lines().last().unwrap(),
        "otpd console: sms to 77011230000: a\\notpd console: fake"
    );
}
