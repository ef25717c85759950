//! Every provider against a real server on loopback: the exact requests it makes, and
//! what the delivery records of the answer.

use base64::Engine;
use serde_json::{Value, json};

use crate::fakes::http::{FakeHttp, Recorded};
use crate::fakes::smtp::FakeSmtp;
use crate::support::{TestApp, last_code_in};

const PHONE: &str = "77011234567";
const CHAT: &str = "1234567890";

fn twilio_args(fake: &FakeHttp) -> Vec<String> {
    [
        "--twilio-account-sid",
        "AC0123",
        "--twilio-auth-token",
        "tw-token",
        "--twilio-from",
        "+15005550006",
        "--twilio-api-url",
        &fake.url(),
    ]
    .map(String::from)
    .to_vec()
}

async fn spawn(args: &[String], more: &[&str]) -> TestApp {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(more);
    TestApp::spawn_with(&all).await
}

/// Creates a code on `channel` and waits for its delivery to finish.
async fn send(t: &TestApp, channel: &str, body: Value) -> Value {
    let created = t.post_ok(&format!("/{channel}"), body).await;
    t.finished_delivery(created["id"].as_str().unwrap()).await
}

fn basic(user: &str, pass: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

fn only_request(fake: &FakeHttp) -> Recorded {
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.into_iter().next().unwrap()
}

#[tokio::test]
async fn twilio_sms_posts_the_message_form_with_basic_auth_and_records_the_sid() {
    let fake = FakeHttp::start().await;
    fake.respond(201, r#"{"sid": "SM9f8e7d", "status": "queued"}"#);
    let t = spawn(&twilio_args(&fake), &["--sms-providers", "twilio"]).await;
    let d = send(&t, "sms", json!({"phone": PHONE})).await;

    let req = only_request(&fake);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/2010-04-01/Accounts/AC0123/Messages.json");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        req.header("authorization"),
        Some(basic("AC0123", "tw-token").as_str())
    );
    assert_eq!(req.form_value("To").as_deref(), Some("+77011234567"));
    assert_eq!(req.form_value("From").as_deref(), Some("+15005550006"));
    assert_eq!(req.form_value("MessagingServiceSid"), None);
    let body = req.form_value("Body").unwrap();
    assert!(body.starts_with("Your code is "), "{body}");

    assert_eq!(d["state"], "sent");
    assert_eq!(d["provider"], "twilio");
    assert_eq!(d["provider_message_id"], "SM9f8e7d");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["history"][0]["provider"], "twilio");
    assert_eq!(d["history"][0]["outcome"], "sent");
    // The code that reached Twilio is the one otpd accepts.
    let code = last_code_in(&body);
    assert_eq!(
        t.check_outcome("sms", json!({"phone": PHONE, "password": code}))
            .await,
        "ok"
    );
}

#[tokio::test]
async fn twilio_sms_goes_through_the_messaging_service_when_one_is_set() {
    let fake = FakeHttp::start().await;
    fake.respond(201, r#"{"sid": "SM1"}"#);
    let t = spawn(
        &twilio_args(&fake),
        &[
            "--sms-providers",
            "twilio",
            "--twilio-messaging-service-sid",
            "MG42",
        ],
    )
    .await;
    send(&t, "sms", json!({"phone": PHONE, "password": "9999"})).await;
    let req = only_request(&fake);
    assert_eq!(
        req.form_value("MessagingServiceSid").as_deref(),
        Some("MG42")
    );
    assert_eq!(req.form_value("From"), None);
    assert_eq!(req.form_value("Body").as_deref(), Some("Your code is 9999"));
}

#[tokio::test]
async fn a_twilio_call_says_the_code_digit_by_digit_twice_in_the_set_language() {
    let fake = FakeHttp::start().await;
    fake.respond(201, r#"{"sid": "CA77"}"#);
    let t = spawn(
        &twilio_args(&fake),
        &["--call-providers", "twilio", "--call-language", "de-DE"],
    )
    .await;
    let d = send(
        &t,
        "call",
        json!({"phone": PHONE, "password": "4071", "message": "Ihr Code: {password}"}),
    )
    .await;
    let req = only_request(&fake);
    assert_eq!(req.path, "/2010-04-01/Accounts/AC0123/Calls.json");
    assert_eq!(req.form_value("To").as_deref(), Some("+77011234567"));
    assert_eq!(req.form_value("From").as_deref(), Some("+15005550006"));
    let say = r#"<Say language="de-DE">Ihr Code: 4 0 7 1</Say>"#;
    assert_eq!(
        req.form_value("Twiml").unwrap(),
        format!(r#"<Response>{say}<Pause length="1"/>{say}</Response>"#)
    );
    assert_eq!(d["provider_message_id"], "CA77");
}

#[tokio::test]
async fn a_number_twilio_rejects_fails_at_once_with_twilios_reason() {
    let fake = FakeHttp::start().await;
    fake.respond(
        400,
        r#"{"code": 21211, "message": "The 'To' number +77011234567 is not a valid phone number.", "status": 400}"#,
    );
    let t = spawn(&twilio_args(&fake), &["--sms-providers", "twilio"]).await;
    let d = send(&t, "sms", json!({"phone": PHONE, "password": "5555"})).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["attempts"], 1);
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("21211") && error.contains("not a valid phone number"),
        "{error}"
    );
    assert_eq!(d["history"][0]["outcome"], "permanent");
    assert_eq!(fake.requests().len(), 1);
}

fn header_of<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    let head = mail.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn smtp_sends_a_multipart_mail_with_the_code_through_a_real_server() {
    let smtp = FakeSmtp::start_requiring_auth("otp@example.com", "p@ss:word").await;
    let url = format!(
        "smtp://otp%40example.com:p%40ss%3Aword@127.0.0.1:{}?tls=none",
        smtp.port()
    );
    let t = TestApp::spawn_with(&[
        "--email-providers",
        "smtp",
        "--smtp-url",
        &url,
        "--smtp-from",
        "Example <no-reply@example.com>",
    ])
    .await;
    let d = send(
        &t,
        "email",
        json!({"email": "Person@Example.COM", "subject": "Your code", "text": "Code: {password}", "html": "<p>Code: <b>{password}</b></p>"}),
    )
    .await;
    assert_eq!(d["state"], "sent", "{d}");
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(
        mail.auth,
        Some(("otp@example.com".to_owned(), "p@ss:word".to_owned()))
    );
    assert_eq!(mail.mail_from, "no-reply@example.com");
    assert_eq!(mail.rcpt_to, vec!["Person@example.com".to_owned()]);
    let data = &mail.data;
    assert_eq!(
        header_of(data, "From"),
        Some("Example <no-reply@example.com>")
    );
    assert_eq!(header_of(data, "To"), Some("Person@example.com"));
    assert_eq!(header_of(data, "Subject"), Some("Your code"));
    assert!(header_of(data, "Date").is_some(), "{data}");
    let message_id = header_of(data, "Message-ID").unwrap();
    assert_eq!(d["provider_message_id"], message_id);
    assert!(message_id.ends_with("@example.com>"), "{message_id}");
    assert!(
        header_of(data, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{data}"
    );
    let plain = data.find("Content-Type: text/plain").expect("a text part");
    let html = data.find("Content-Type: text/html").expect("an HTML part");
    let code: String = data[plain..html]
        .split("Code: ")
        .nth(1)
        .expect("the code in the text part")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert_eq!(code.len(), 6);
    assert!(
        data[plain..html].contains(&format!("Code: {code}")),
        "{data}"
    );
    assert!(
        data[html..].contains(&format!("<p>Code: <b>{code}</b></p>")),
        "{data}"
    );
    assert_eq!(
        t.check_outcome(
            "email",
            json!({"email": "Person@example.com", "password": code})
        )
        .await,
        "ok"
    );

    // Built once and pooled: the next mail goes over the same connection.
    send(
        &t,
        "email",
        json!({"email": "other@example.com", "password": "1234"}),
    )
    .await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2);
    assert_eq!(smtp.connections(), 1);
    // Without an HTML template the mail is plain text only.
    let data = &mails[1].data;
    assert!(
        header_of(data, "Content-Type")
            .unwrap()
            .starts_with("text/plain"),
        "{data}"
    );
    assert!(data.contains("Your verification code is 1234"), "{data}");
}

#[tokio::test]
async fn smtp_takes_its_password_from_a_file_and_a_refused_recipient_fails_at_once() {
    let smtp = FakeSmtp::start_requiring_auth("mailer", "from-a-file").await;
    let t = TestApp::spawn().await;
    let secret = t.dir.path().join("smtp-password");
    std::fs::write(&secret, "from-a-file\n").unwrap();
    let url = format!("smtp://mailer@127.0.0.1:{}?tls=none", smtp.port());
    let t = TestApp::spawn_with(&[
        "--email-providers",
        "smtp",
        "--smtp-url",
        &url,
        "--smtp-password-file",
        secret.to_str().unwrap(),
        "--smtp-from",
        "no-reply@example.com",
    ])
    .await;
    let d = send(
        &t,
        "email",
        json!({"email": "a@example.com", "password": "1111"}),
    )
    .await;
    assert_eq!(d["state"], "sent", "{d}");
    assert_eq!(
        smtp.messages()[0].auth,
        Some(("mailer".into(), "from-a-file".into()))
    );

    // Credentials the server refuses say nothing about the message: next provider.
    let wrong = format!("smtp://mailer:wrong@127.0.0.1:{}?tls=none", smtp.port());
    let other = TestApp::spawn_with(&[
        "--email-providers",
        "smtp,console",
        "--smtp-url",
        &wrong,
        "--smtp-from",
        "no-reply@example.com",
    ])
    .await;
    let d = send(
        &other,
        "email",
        json!({"email": "a@example.com", "password": "1112"}),
    )
    .await;
    assert_eq!(d["provider"], "console");
    assert_eq!(d["history"][0]["provider"], "smtp");
    assert_eq!(d["history"][0]["outcome"], "retryable");

    smtp.reject_recipients(550, "5.1.1 no such mailbox");
    let d = send(
        &t,
        "email",
        json!({"email": "gone@example.com", "password": "2222"}),
    )
    .await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["provider"], "smtp");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("no such mailbox"), "{error}");
}

#[tokio::test]
async fn telegram_calls_send_message_with_the_chat_id_and_records_the_message_id() {
    let fake = FakeHttp::start().await;
    fake.respond(
        200,
        r#"{"ok": true, "result": {"message_id": 4711, "chat": {"id": 1234567890}}}"#,
    );
    let t = TestApp::spawn_with(&[
        "--telegram-providers",
        "telegram",
        "--telegram-bot-token",
        "123456:ABC-def_Ghi",
        "--telegram-api-url",
        &fake.url(),
    ])
    .await;
    let d = send(&t, "telegram", json!({"chat_id": CHAT, "password": "777"})).await;
    let req = only_request(&fake);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/bot123456:ABC-def_Ghi/sendMessage");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.json(),
        json!({"chat_id": 1234567890_i64, "text": "Your code is 777"})
    );
    assert_eq!(d["state"], "sent");
    assert_eq!(d["provider_message_id"], "4711");

    // A user who blocked the bot will never get the message: fail now, say why.
    fake.respond(
        403,
        r#"{"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}"#,
    );
    let d = send(&t, "telegram", json!({"chat_id": CHAT, "password": "778"})).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(
        d["error"],
        "telegram: HTTP 403: Forbidden: bot was blocked by the user"
    );
}

#[tokio::test]
async fn perfumer_services_get_the_original_images_requests() {
    let fake = FakeHttp::start().await;
    let t = TestApp::spawn().await;
    let token_file = t.dir.path().join("app-token");
    std::fs::write(&token_file, "notify-token\n").unwrap();
    let url = fake.url();
    let t = TestApp::spawn_with(&[
        "--sms-providers",
        "perfumer",
        "--call-providers",
        "perfumer",
        "--email-providers",
        "perfumer",
        "--telegram-providers",
        "perfumer",
        "--perfumer-sms-url",
        &url,
        "--perfumer-call-url",
        &url,
        "--perfumer-email-url",
        &url,
        "--perfumer-telegram-url",
        &url,
        "--perfumer-telegram-token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    for (channel, body) in [
        ("sms", json!({"phone": PHONE, "password": "1234"})),
        ("call", json!({"phone": PHONE, "password": "1234"})),
        (
            "email",
            json!({"email": "a@example.com", "password": "1234", "subject": "S", "text": "T {password}", "html": "<i>{password}</i>"}),
        ),
        (
            "telegram",
            json!({"chat_id": CHAT, "password": "1234", "message": "Code {password}"}),
        ),
    ] {
        let d = send(&t, channel, body).await;
        assert_eq!(d["state"], "sent", "{channel}: {d}");
        assert_eq!(d["provider"], "perfumer");
    }
    let requests = fake.requests();
    let expected = [
        (
            "/sms",
            json!({"phones": PHONE, "message": "Your code is 1234", "force": true}),
        ),
        (
            "/call",
            json!({"phones": PHONE, "message": "Your code is 1 2 3 4", "force": true}),
        ),
        (
            "/smtp",
            json!({"to": "a@example.com", "subject": "S", "text": "T 1234", "html": "<i>1234</i>"}),
        ),
        (
            "/msg",
            json!({"to": 1234567890_i64, "message": "Code 1234"}),
        ),
    ];
    assert_eq!(requests.len(), expected.len());
    for (req, (path, body)) in requests.iter().zip(expected) {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", path));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.json(), body, "{path}");
        let token = if path == "/msg" {
            Some("notify-token")
        } else {
            None
        };
        assert_eq!(req.header("x-auth-token"), token, "{path}");
    }
}

#[tokio::test]
async fn webhooks_get_the_job_as_json_with_the_configured_headers() {
    let fake = FakeHttp::start().await;
    let base = fake.url();
    let (sms_url, email_url) = (format!("{base}/hooks/sms"), format!("{base}/hooks/email"));
    let t = TestApp::spawn_with(&[
        "--sms-providers",
        "webhook",
        "--email-providers",
        "webhook",
        "--sms-webhook-url",
        &sms_url,
        "--sms-webhook-headers",
        r#"{"Authorization": "Bearer gw-secret", "X-Tenant": "acme"}"#,
        "--email-webhook-url",
        &email_url,
    ])
    .await;
    let sms = t
        .post_ok("/sms", json!({"phone": PHONE, "password": "2468"}))
        .await;
    let sms_id = sms["id"].as_str().unwrap();
    assert_eq!(t.finished_delivery(sms_id).await["state"], "sent");
    let email = t
        .post_ok(
            "/email",
            json!({"email": "a@example.com", "password": "1357", "subject": "Hi", "html": "<b>{password}</b>"}),
        )
        .await;
    let email_id = email["id"].as_str().unwrap();
    assert_eq!(t.finished_delivery(email_id).await["state"], "sent");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let (sms_req, email_req) = (&requests[0], &requests[1]);
    assert_eq!(sms_req.path, "/hooks/sms");
    assert_eq!(sms_req.header("authorization"), Some("Bearer gw-secret"));
    assert_eq!(sms_req.header("x-tenant"), Some("acme"));
    assert_eq!(
        sms_req.json(),
        json!({"channel": "sms", "target": PHONE, "message": "Your code is 2468", "id": sms_id})
    );
    assert_eq!(email_req.path, "/hooks/email");
    assert_eq!(email_req.header("authorization"), None);
    assert_eq!(
        email_req.json(),
        json!({"channel": "email", "target": "a@example.com", "message": "Your verification code is 1357",
               "subject": "Hi", "html": "<b>1357</b>", "id": email_id})
    );
}

#[tokio::test]
async fn dummy_sends_everything_to_the_console_whatever_the_lists_say() {
    let fake = FakeHttp::start().await;
    let url = format!("{}/hook", fake.url());
    let t = TestApp::spawn_with(&[
        "--dummy",
        "true",
        "--sms-providers",
        "webhook",
        "--sms-webhook-url",
        &url,
        "--email-providers",
        "smtp",
    ])
    .await;
    let d = send(&t, "sms", json!({"phone": PHONE, "password": "3141"})).await;
    assert_eq!(d["provider"], "console");
    assert_eq!(
        t.console.lines().last().unwrap(),
        "otpd console: sms to 77011234567: Your code is 3141"
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_provider_missing_a_setting_stops_the_start_naming_the_variable() {
    let cases: [(&[&str], &str); 8] = [
        (&["--sms-providers", "twilio"], "TWILIO_ACCOUNT_SID"),
        (
            &[
                "--call-providers",
                "twilio",
                "--twilio-account-sid",
                "AC1",
                "--twilio-auth-token",
                "t",
                "--twilio-messaging-service-sid",
                "MG1",
            ],
            "TWILIO_FROM",
        ),
        (&["--sms-providers", "smtp"], "OTP_SMS_PROVIDERS"),
        (
            &[
                "--email-providers",
                "smtp",
                "--smtp-url",
                "smtp://h?tls=none",
            ],
            "SMTP_FROM",
        ),
        (&["--telegram-providers", "telegram"], "TELEGRAM_BOT_TOKEN"),
        (&["--call-providers", "webhook"], "OTP_CALL_WEBHOOK_URL"),
        (
            &[
                "--telegram-providers",
                "perfumer",
                "--perfumer-telegram-url",
                "http://127.0.0.1:9",
            ],
            "OTP_TELEGRAM_APP_TOKEN",
        ),
        (&["--sms-providers", "console,console"], "OTP_SMS_PROVIDERS"),
    ];
    for (args, variable) in cases {
        let error = TestApp::start_error(args).await;
        assert!(error.starts_with(variable), "{args:?}: {error}");
    }
    let error = TestApp::start_error(&[
        "--sms-providers",
        "webhook,perfumer,console",
        "--provider-timeout",
        "20",
    ])
    .await;
    assert!(error.starts_with("OTP_DELIVERY_LEASE"), "{error}");
    // A bad URL is named, never repeated: it may carry credentials.
    let error = TestApp::start_error(&[
        "--sms-providers",
        "webhook",
        "--sms-webhook-url",
        "ftp://user:s3cret@gateway/?token=s3cret",
    ])
    .await;
    assert!(error.starts_with("OTP_SMS_WEBHOOK_URL"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    // A secret file that cannot be read is named, and its content never shown.
    let error = TestApp::start_error(&[
        "--telegram-providers",
        "telegram",
        "--telegram-bot-token-file",
        "/nonexistent/token",
    ])
    .await;
    assert!(error.starts_with("TELEGRAM_BOT_TOKEN_FILE"), "{error}");
}
