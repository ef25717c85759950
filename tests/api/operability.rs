//! What an operator watches: `/metrics` after a scripted run, request ids, and the
//! separate metrics listener.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestApp;

const PHONE: &str = "77011234567";

pub async fn metrics_of(t: &TestApp) -> String {
    let res = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    res.text().await.unwrap()
}

pub fn has(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "missing {line:?} in:\n{metrics}"
    );
}

#[tokio::test]
async fn metrics_follow_a_scripted_run_and_carry_no_target_or_code() {
    let t = TestApp::spawn_with(&["--max-attempts", "2"]).await;
    for password in ["111111", "222222"] {
        let created = t
            .post_ok("/sms", json!({"phone": PHONE, "password": password}))
            .await;
        t.finished_delivery(created["id"].as_str().unwrap()).await;
    }
    assert_eq!(
        t.post("/sms", json!({"phone": "12"})).await.code(),
        "invalid_parameter"
    );
    t.post_ok(
        "/limit/email",
        json!({"emails": [{"minutes": 10, "rate": 1}]}),
    )
    .await;
    t.post_ok("/email", json!({"email": "a@example.com", "password": "1"}))
        .await;
    assert_eq!(
        t.post("/email", json!({"email": "a@example.com", "password": "2"}))
            .await
            .code(),
        "email_limit"
    );
    let check = |password: &str| json!({"phone": PHONE, "password": password});
    assert_eq!(
        t.check_outcome("sms", check("999999")).await,
        "invalid_password"
    );
    assert_eq!(t.check_outcome("sms", check("222222")).await, "ok");
    t.post_ok("/sms", check("333333")).await;
    t.check_outcome("sms", check("000001")).await;
    t.check_outcome("sms", check("000002")).await;
    assert_eq!(
        t.check_outcome("sms", check("333333")).await,
        "attempts_exceeded"
    );

    let m = metrics_of(&t).await;
    for line in [
        r#"otpd_sends_total{channel="sms",outcome="accepted"} 3"#,
        r#"otpd_sends_total{channel="sms",outcome="invalid"} 1"#,
        r#"otpd_sends_total{channel="email",outcome="accepted"} 1"#,
        r#"otpd_sends_total{channel="email",outcome="limited"} 1"#,
        r#"otpd_limit_rejections_total{channel="email",kind="target"} 1"#,
        r#"otpd_checks_total{channel="sms",outcome="ok"} 1"#,
        r#"otpd_checks_total{channel="sms",outcome="invalid_password"} 3"#,
        r#"otpd_checks_total{channel="sms",outcome="attempts_exceeded"} 1"#,
        r#"otpd_http_requests_total{route="/sms",status="400"} 1"#,
        r#"otpd_http_requests_total{route="/email",status="400"} 1"#,
    ] {
        has(&m, line);
    }
    assert!(m.contains(r#"otpd_deliveries_total{channel="sms",provider="console",state="sent"} "#));
    assert!(m.contains(r#"otpd_delivery_latency_seconds_count{channel="sms"} "#));
    assert!(m.contains(r#"otpd_store_operation_seconds_count{operation="create_code"} "#));
    assert!(
        m.contains(r#"otpd_store_operation_seconds_bucket{operation="check_code",le="+Inf"} "#)
    );
    // Labels only: sample values are numbers, and a float may hold any digits.
    let labels: String = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| Some(&l[l.find('{')?..l.find('}')?]))
        .collect();
    for secret in [PHONE, "a@example.com", "222222", "333333", "999999"] {
        assert!(!labels.contains(secret), "{secret} in the metrics' labels");
    }
}

#[tokio::test]
async fn the_outbox_shows_its_depth_and_the_age_of_its_oldest_job() {
    let t = TestApp::spawn_with(&["--delivery-workers", "0"]).await;
    for i in 0..3 {
        t.post_ok(
            "/email",
            json!({"email": format!("u{i}@example.com"), "password": "1"}),
        )
        .await;
    }
    t.advance(42);
    let m = metrics_of(&t).await;
    has(&m, r#"otpd_delivery_queue_depth{channel="email"} 3"#);
    has(
        &m,
        r#"otpd_delivery_oldest_job_age_seconds{channel="email"} 42"#,
    );
    has(&m, r#"otpd_delivery_queue_depth{channel="sms"} 0"#);
    // Jobs that expire with no worker to send them count as ended, like the rest.
    t.advance(300);
    t.app().purge_expired().await.unwrap();
    let m = metrics_of(&t).await;
    has(&m, r#"otpd_delivery_queue_depth{channel="email"} 0"#);
    has(
        &m,
        r#"otpd_deliveries_total{channel="email",provider="none",state="expired"} 3"#,
    );
}

#[tokio::test]
async fn metrics_need_basic_auth_unless_served_on_their_own_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let t = TestApp::spawn_with(&[
        "--http-auth-username",
        "app",
        "--http-auth-password",
        "pw",
        "--metrics-listen",
        &listen,
    ])
    .await;
    let main = t.get("/metrics").await;
    assert_eq!(main.status, StatusCode::UNAUTHORIZED);
    let separate = t
        .client
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(separate.status(), StatusCode::OK);
    let text = separate.text().await.unwrap();
    assert!(text.contains("# TYPE otpd_sends_total counter"));
    // Refused before routing, and still named by its route.
    has(
        &text,
        r#"otpd_http_requests_total{route="/metrics",status="401"} 1"#,
    );
    let elsewhere = t
        .client
        .get(format!("http://{listen}/sms/check"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_callers_is_kept() {
    let t = TestApp::spawn().await;
    let made = t.get("/health").await;
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_ne!(t.get("/health").await.headers["x-request-id"], id.as_str());
    let send = |value: &'static str| {
        t.client
            .get(format!("{}/nowhere", t.base))
            .header("X-Request-Id", value)
            .send()
    };
    let kept = send("lb-7f3a.42").await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "lb-7f3a.42");
    // Anything that could forge log lines is replaced.
    let replaced = send("evil value with spaces").await.unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "evil value with spaces");
}

#[tokio::test]
async fn otpd_serves_https_with_the_given_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let t = TestApp::spawn_with(&[
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ])
    .await;
    let port = t.base.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let created: serde_json::Value = client
        .post(format!("https://localhost:{port}/sms"))
        .json(&json!({"phone": PHONE, "password": "4242"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["status"], true, "{created}");
    // /target sees the caller's address through TLS too.
    let target: serde_json::Value = client
        .get(format!("https://localhost:{port}/target?password=12345678"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(target["status_code"], "invalid_password");
    // Plain HTTP on the HTTPS port gets no answer, and a client that does not trust the
    // certificate is refused.
    assert!(
        t.client
            .get(format!("http://localhost:{port}/health"))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::new()
            .get(format!("https://localhost:{port}/health"))
            .send()
            .await
            .is_err()
    );
    // A key that does not belong to the certificate stops the start, naming it.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
    let wrong_key = dir.path().join("wrong.pem");
    std::fs::write(&wrong_key, other.key_pair.serialize_pem()).unwrap();
    let error = TestApp::start_error(&[
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        wrong_key.to_str().unwrap(),
    ])
    .await;
    assert!(error.starts_with("OTP_TLS_KEY"), "{error}");
}

#[test]
fn the_committed_openapi_json_is_what_the_code_generates() {
    let generated = serde_json::to_string_pretty(otpd::http::spec()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("OTPD_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json differs from the routes' docs; regenerate it with \
         OTPD_WRITE_OPENAPI=1 cargo test --test api openapi"
    );
}

#[tokio::test]
async fn the_api_describes_itself_and_its_page_needs_nothing_from_elsewhere() {
    let t = TestApp::spawn().await;
    let served = t.get("/openapi.json").await;
    assert_eq!(&served.body, otpd::http::spec());
    let spec = &served.body;
    assert_eq!(spec["openapi"], "3.1.0");
    for (path, method) in [
        ("/sms", "post"),
        ("/call/check", "get"),
        ("/email/check", "post"),
        ("/limit/telegram", "post"),
        ("/target", "get"),
        ("/telegram/webhook", "post"),
        ("/deliveries/{id}", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        assert!(spec["paths"][path][method].is_object(), "{method} {path}");
    }
    let query: Vec<&str> = spec["paths"]["/sms/check"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(query, ["phone", "password", "ip"]);
    assert!(
        spec["paths"]["/limit/sms"]["get"]
            .get("parameters")
            .is_none()
    );
    assert!(spec["paths"]["/limit/sms"]["post"]["requestBody"].is_object());
    let fields =
        &spec["paths"]["/email"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(fields["required"], json!(["email"]));
    for name in ["password", "lifetime", "subject", "text", "html", "ip"] {
        assert!(fields["properties"][name].is_object(), "{name}");
    }
    let text = spec.to_string();
    for code in [
        "invalid_password",
        "attempts_exceeded",
        "missing_parameter",
        "invalid_parameter",
        "invalid_body",
        "ip_limit",
        "phone_limit",
        "email_limit",
        "chat_id_limit",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "store_unavailable",
        "internal",
    ] {
        assert!(
            text.contains(&format!("\"{code}\"")),
            "{code} is not documented"
        );
    }
    let page = t
        .client
        .get(format!("{}/docs", t.base))
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "the page loads nothing from elsewhere"
    );
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_use_only_metrics_otpd_exports() {
    let t = TestApp::spawn().await;
    let exported: Vec<String> = metrics_of(&t)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/prometheus-alerts.yml",
        "deploy/grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut used = 0;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("otpd_") {
                continue;
            }
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            assert!(
                exported.iter().any(|e| e == family),
                "{file} uses {word}, which otpd does not export"
            );
            used += 1;
        }
        assert!(used >= 5, "{file} names few metrics");
    }
}
