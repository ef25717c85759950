//! The Telegram bot end to end, against a fake Bot API on loopback: a user writes to the
//! bot, gets a code, the application trades it at `/target` for the chat id.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::durability::{run_to_exit, start};
use crate::fakes::telegram::FakeBotApi;
use crate::support::{Answer, TestApp};

const TOKEN: &str = "123456:bot-token_ABC";
const SECRET: &str = "hook-secret_42";
const ADA: i64 = 1111111;
const BOB: i64 = 2222222;

async fn bot_app(api: &FakeBotApi, more: &[&str]) -> TestApp {
    let url = api.url();
    let mut args = vec![
        "--telegram-providers",
        "telegram",
        "--telegram-bot-token",
        TOKEN,
        "--telegram-api-url",
        &url,
        "--telegram-webhook-secret",
        SECRET,
    ];
    args.extend_from_slice(more);
    TestApp::spawn_with(&args).await
}

/// A private message as Telegram sends it.
fn private_message(update_id: i64, chat: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": 1365,
            "from": {"id": chat, "is_bot": false, "first_name": "Ada", "username": "ada", "language_code": "en"},
            "chat": {"id": chat, "first_name": "Ada", "username": "ada", "type": "private"},
            "date": 1441645532,
            "text": text,
            "entities": [{"offset": 0, "length": text.len().min(6), "type": "bot_command"}]
        }
    })
}

async fn post_update(t: &TestApp, update: &Value, secret: Option<&str>) -> Answer {
    let mut request = t
        .client
        .post(format!("{}/telegram/webhook", t.base))
        .header("content-type", "application/json")
        .body(update.to_string());
    if let Some(secret) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap(),
    }
}

/// The code in the bot's `n`th reply (1-based), once it was sent.
async fn code_in_reply(api: &FakeBotApi, n: usize, chat: i64) -> String {
    let sent = api.wait_for_calls("sendMessage", n).await;
    let reply = &sent[n - 1];
    assert_eq!(reply["chat_id"], chat, "{reply}");
    let text = reply["text"].as_str().unwrap();
    let code: String = text
        .trim_start_matches("Your code is ")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(
        text.starts_with(&format!("Your code is {code}. It is valid for ")),
        "{text}"
    );
    code
}

async fn target(t: &TestApp, body: Value) -> Answer {
    t.get_with_body("/target", body).await
}

#[tokio::test]
async fn a_user_writes_to_the_bot_and_the_application_learns_the_chat_id() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &[]).await;
    let answer = post_update(&t, &private_message(1, ADA, "/start"), Some(SECRET)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"status": true}));

    let code = code_in_reply(&api, 1, ADA).await;
    assert_eq!(code.len(), 8);
    assert_eq!(
        api.calls("sendMessage")[0]["text"],
        format!("Your code is {code}. It is valid for 5 minutes.")
    );
    let found = target(&t, json!({"password": code})).await;
    assert_eq!(
        found.body,
        json!({"status": true, "content": {"target": ADA.to_string()}})
    );
    // Spent: the same code answers no a second time.
    let again = target(&t, json!({"password": code})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["status"], false);
    assert_eq!(again.code(), "invalid_password");

    // `/start` with a deep-link payload, and POST with the channel named.
    post_update(&t, &private_message(2, BOB, "/start link-42"), Some(SECRET)).await;
    let code = code_in_reply(&api, 2, BOB).await;
    let found = t
        .post("/target", json!({"password": code, "channel": "telegram"}))
        .await;
    assert_eq!(found.body["content"]["target"], BOB.to_string());
    let other = t
        .post("/target", json!({"password": "12345678", "channel": "sms"}))
        .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::BAD_REQUEST, "invalid_parameter")
    );
    let missing = t.post("/target", json!({})).await;
    assert_eq!(missing.code(), "missing_parameter");
}

#[tokio::test]
async fn the_webhook_wants_the_secret_token_and_not_basic_auth() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(
        &api,
        &[
            "--http-auth-username",
            "app",
            "--http-auth-password",
            "app-pass",
        ],
    )
    .await;
    let update = private_message(7, ADA, "hi");
    for wrong in [None, Some("nope"), Some("hook-secret_4")] {
        let answer = post_update(&t, &update, wrong).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    assert!(api.calls("sendMessage").is_empty());
    let answer = post_update(&t, &update, Some(SECRET)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let code = code_in_reply(&api, 1, ADA).await;
    // `/target` itself is behind Basic auth.
    let unauthenticated = target(&t, json!({"password": code})).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    let found = t
        .client
        .get(format!("{}/target?password={code}", t.base))
        .basic_auth("app", Some("app-pass"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(found["content"]["target"], ADA.to_string());
}

#[tokio::test]
async fn updates_that_ask_for_nothing_get_200_and_no_message() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &[]).await;
    let person = json!({"id": ADA, "is_bot": false, "first_name": "Ada"});
    let ignored = [
        json!({"update_id": 10, "message": {"message_id": 1, "date": 1, "text": "hi",
            "from": person, "chat": {"id": -100123, "title": "Team", "type": "group"}}}),
        json!({"update_id": 11, "message": {"message_id": 2, "date": 1, "text": "hi",
            "from": person, "chat": {"id": -100124, "title": "Team", "type": "supergroup"}}}),
        json!({"update_id": 12, "edited_message": {"message_id": 3, "date": 1, "edit_date": 2,
            "text": "edited", "from": person, "chat": {"id": ADA, "type": "private"}}}),
        json!({"update_id": 13, "channel_post": {"message_id": 4, "date": 1, "text": "news",
            "chat": {"id": -100999, "title": "News", "type": "channel"}}}),
        json!({"update_id": 14, "message": {"message_id": 5, "date": 1, "text": "beep",
            "from": {"id": 999, "is_bot": true, "first_name": "Other bot"},
            "chat": {"id": 999, "type": "private"}}}),
        json!({"update_id": 15, "my_chat_member": {"chat": {"id": ADA, "type": "private"},
            "from": person, "date": 1, "old_chat_member": {}, "new_chat_member": {}}}),
        json!({"update_id": 16, "a_kind_added_next_year": {"anything": [1, 2, 3]}}),
    ];
    for update in &ignored {
        let answer = post_update(&t, update, Some(SECRET)).await;
        assert_eq!(answer.status, StatusCode::OK, "{update}");
        assert_eq!(answer.body, json!({"status": true}));
    }
    // Unknown fields in a message that does ask for a code are no obstacle.
    let mut wanted = private_message(17, ADA, "hello");
    wanted["message"]["a_field_added_next_year"] = json!({"x": true});
    wanted["business_connection_id"] = json!("abc");
    post_update(&t, &wanted, Some(SECRET)).await;
    code_in_reply(&api, 1, ADA).await;
    // Telegram repeats an update when it missed our answer: it is handled once.
    let answer = post_update(&t, &wanted, Some(SECRET)).await;
    assert_eq!(answer.status, StatusCode::OK);
    post_update(&t, &private_message(18, BOB, "hello"), Some(SECRET)).await;
    code_in_reply(&api, 2, BOB).await;
    assert_eq!(api.calls("sendMessage").len(), 2);

    let garbage = t
        .client
        .post(format!("{}/telegram/webhook", t.base))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_new_message_replaces_the_chats_code_and_codes_expire() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &[]).await;
    post_update(&t, &private_message(1, ADA, "code please"), Some(SECRET)).await;
    let first = code_in_reply(&api, 1, ADA).await;
    post_update(&t, &private_message(2, ADA, "another"), Some(SECRET)).await;
    let second = code_in_reply(&api, 2, ADA).await;
    assert_ne!(first, second);
    assert_eq!(
        target(&t, json!({"password": first})).await.code(),
        "invalid_password"
    );
    assert_eq!(
        target(&t, json!({"password": second})).await.body["content"]["target"],
        ADA.to_string()
    );

    post_update(&t, &private_message(3, ADA, "one more"), Some(SECRET)).await;
    let third = code_in_reply(&api, 3, ADA).await;
    t.advance(301);
    assert_eq!(
        target(&t, json!({"password": third})).await.code(),
        "invalid_password"
    );
}

#[tokio::test]
async fn wrong_target_codes_are_limited_per_ip() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(
        &api,
        &["--target-failures", "3", "--telegram-lifetime", "3600"],
    )
    .await;
    post_update(&t, &private_message(1, ADA, "hi"), Some(SECRET)).await;
    let code = code_in_reply(&api, 1, ADA).await;
    for guess in ["00000001", "00000002", "00000003"] {
        let a = target(&t, json!({"password": guess, "ip": "203.0.113.7"})).await;
        assert_eq!(a.code(), "invalid_password");
    }
    // Now even the right code is refused from that ip: guessing must not pay.
    let limited = target(&t, json!({"password": code, "ip": "203.0.113.7"})).await;
    assert_eq!(
        (limited.status, limited.code()),
        (StatusCode::BAD_REQUEST, "ip_limit")
    );
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    // Other addresses are not held up, and the window passes.
    let other = target(&t, json!({"password": "00000004", "ip": "198.51.100.1"})).await;
    assert_eq!(other.code(), "invalid_password");
    t.advance(wait);
    let found = target(&t, json!({"password": code, "ip": "203.0.113.7"})).await;
    assert_eq!(found.body["content"]["target"], ADA.to_string());
    // Every wrong code is counted where an operator can alert on it.
    let metrics = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\notpd_target_lookup_failures_total 4\n"),
        "{metrics}"
    );
    // Without "ip", the connecting address is counted.
    for _ in 0..3 {
        target(&t, json!({"password": "00000005"})).await;
    }
    assert_eq!(
        target(&t, json!({"password": "00000006"})).await.code(),
        "ip_limit"
    );
}

#[tokio::test]
async fn the_bot_obeys_the_chats_send_limit() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &[]).await;
    t.post_ok(
        "/limit/telegram",
        json!({"chat_ids": [{"minutes": 10, "rate": 1}]}),
    )
    .await;
    post_update(&t, &private_message(1, ADA, "hi"), Some(SECRET)).await;
    code_in_reply(&api, 1, ADA).await;
    let answer = post_update(&t, &private_message(2, ADA, "again"), Some(SECRET)).await;
    assert_eq!(answer.status, StatusCode::OK);
    post_update(&t, &private_message(3, BOB, "hi"), Some(SECRET)).await;
    code_in_reply(&api, 2, BOB).await;
    assert_eq!(api.calls("sendMessage").len(), 2, "no second code for Ada");
}

#[tokio::test]
async fn polling_resumes_after_a_restart_without_repeating_or_losing_updates() {
    let api = FakeBotApi::start(TOKEN).await;
    api.push_update(private_message(501, ADA, "/start"));
    api.push_update(
        json!({"update_id": 502, "message": {"message_id": 9, "date": 1, "text": "x",
        "from": {"id": ADA, "is_bot": false, "first_name": "Ada"},
        "chat": {"id": -100, "title": "G", "type": "group"}}}),
    );
    api.push_update(private_message(503, BOB, "hello"));
    let t = bot_app(&api, &["--telegram-updates", "polling"]).await;
    let polls = api.wait_for_calls("getUpdates", 1).await;
    assert_eq!(polls[0]["allowed_updates"], json!(["message"]));
    assert!(polls[0]["timeout"].as_u64().unwrap() > 0, "long polling");
    let sent = api.wait_for_calls("sendMessage", 2).await;
    let chats: Vec<&Value> = sent.iter().map(|m| &m["chat_id"]).collect();
    assert_eq!(chats, [&json!(ADA), &json!(BOB)]);
    // The webhook is not served while polling.
    let hook = post_update(&t, &private_message(1, ADA, "x"), Some(SECRET)).await;
    assert_eq!(hook.status, StatusCode::NOT_FOUND);

    // The next long poll confirms what was handled, and waits there.
    let polls = api.wait_for_calls("getUpdates", 2).await;
    assert_eq!(polls[1]["offset"], 504);
    let t = t.restart().await;
    // A new process asks for whatever Telegram still holds unconfirmed...
    let polls = api.wait_for_calls("getUpdates", 3).await;
    assert_eq!(polls[2].get("offset"), None);
    // ...which may include an update handled just before the restart: it is skipped.
    api.push_update(private_message(503, BOB, "hello"));
    let polls = api.wait_for_calls("getUpdates", 4).await;
    assert_eq!(polls[3]["offset"], 504);
    api.push_update(private_message(504, ADA, "after the restart"));
    let code = code_in_reply(&api, 3, ADA).await;
    assert_eq!(
        target(&t, json!({"password": code})).await.body["content"]["target"],
        ADA.to_string()
    );
    assert_eq!(api.calls("sendMessage").len(), 3, "nothing handled twice");
}

fn cli(api: &FakeBotApi, args: &[&str], with_secret: bool) -> (i32, String, String) {
    let url = api.url();
    let mut env = vec![
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", url.as_str()),
    ];
    if with_secret {
        env.push(("TELEGRAM_WEBHOOK_SECRET", SECRET));
    }
    let mut all = vec!["telegram"];
    all.extend_from_slice(args);
    run_to_exit(&env, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_shows_and_deletes_the_webhook() {
    let api = FakeBotApi::start(TOKEN).await;
    let hook = "https://otp.example.com/telegram/webhook";
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&api, &["set-webhook", "--url", hook], true));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(hook), "{out}");
    assert_eq!(
        api.calls("setWebhook")[0],
        json!({"url": hook, "secret_token": SECRET, "allowed_updates": ["message"], "drop_pending_updates": false})
    );

    let (code, out, err) = tokio::task::block_in_place(|| cli(&api, &["info"], false));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bot: @fake_otp_bot"), "{out}");
    assert!(out.contains(&format!("webhook: {hook}")), "{out}");

    let (code, _, err) = tokio::task::block_in_place(|| cli(&api, &["delete-webhook"], false));
    assert_eq!(code, 0, "{err}");
    assert_eq!(api.calls("deleteWebhook").len(), 1);

    // Telegram's refusal is shown as Telegram worded it, without the token.
    api.refuse(
        "setWebhook",
        400,
        "Bad Request: bad webhook: HTTPS url must be provided for webhook",
    );
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&api, &["set-webhook", "--url", "http://plain"], true));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "otpd: Telegram refused setWebhook: Bad Request: bad webhook: HTTPS url must be provided for webhook"
    );
    assert!(!format!("{out}{err}").contains("bot-token"), "{err}");

    let (code, _, err) = tokio::task::block_in_place(|| run_to_exit(&[], &["telegram", "info"]));
    assert_eq!(code, 1);
    assert!(err.contains("TELEGRAM_BOT_TOKEN"), "{err}");
}

#[tokio::test]
async fn an_open_webhook_is_warned_about_and_without_a_bot_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut otpd = start(
        dir.path(),
        &[
            ("HTTP_AUTH_USERNAME", "app"),
            ("HTTP_AUTH_PASSWORD", "pw"),
            ("TELEGRAM_BOT_TOKEN", TOKEN),
        ],
    );
    assert!(
        otpd.startup_log
            .iter()
            .any(|l| l.contains("TELEGRAM_WEBHOOK_SECRET is not set")),
        "{:?}",
        otpd.startup_log
    );
    otpd.child.kill().unwrap();
    otpd.child.wait().unwrap();

    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &["--telegram-updates", "off"]).await;
    let answer = post_update(&t, &private_message(1, ADA, "hi"), Some(SECRET)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(api.calls("getUpdates").is_empty());
    // No bot token: no bot, so no open endpoint that makes codes for anyone.
    let t = TestApp::spawn().await;
    let answer = post_update(&t, &private_message(1, ADA, "hi"), None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_replaced_codes_pending_reply_is_dropped() {
    let api = FakeBotApi::start(TOKEN).await;
    api.refuse("sendMessage", 502, "Bad Gateway");
    let t = bot_app(&api, &[]).await;
    let states = || t.delivery_states();
    post_update(&t, &private_message(1, ADA, "first"), Some(SECRET)).await;
    api.wait_for_calls("sendMessage", 1).await;
    // The first reply failed once and waits for its retry...
    for _ in 0..500 {
        if states()
            == [(
                "queued".to_owned(),
                Some("telegram: HTTP 502: Bad Gateway".to_owned()),
            )]
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(states()[0].0, "queued");
    // ...when the chat asks again: the old code is dead, so is its reply.
    post_update(&t, &private_message(2, ADA, "second"), Some(SECRET)).await;
    let now = states();
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(
        now[0],
        (
            "failed".to_owned(),
            Some("replaced by a newer code for the same chat".to_owned())
        )
    );
    assert_ne!(now[1].0, "failed");
}

#[tokio::test]
async fn naming_a_new_ip_for_every_guess_does_not_buy_more_guesses() {
    let api = FakeBotApi::start(TOKEN).await;
    let t = bot_app(&api, &["--target-failures", "1"]).await;
    // Each ip may fail once; the connecting address ten times in all.
    for i in 0..10 {
        let a = target(
            &t,
            json!({"password": "00000001", "ip": format!("192.0.2.{i}")}),
        )
        .await;
        assert_eq!(a.code(), "invalid_password", "guess {i}");
    }
    let a = target(&t, json!({"password": "00000001", "ip": "192.0.2.200"})).await;
    assert_eq!(a.code(), "ip_limit");
}
