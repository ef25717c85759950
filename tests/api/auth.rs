//! HTTP Basic auth when HTTP_AUTH_USERNAME and HTTP_AUTH_PASSWORD are set.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn every_route_but_the_probes_needs_the_credentials() {
    let t = TestApp::spawn_with(&[
        "--http-auth-username",
        "app",
        "--http-auth-password",
        "s3cret-pass",
    ])
    .await;
    let url = |p: &str| format!("{}{}", t.base, p);
    let body = json!({"phone": "77011234567", "password": "12345"}).to_string();

    for (method, path) in [
        ("POST", "/sms"),
        ("GET", "/sms/check"),
        ("POST", "/email/check"),
        ("GET", "/limit/sms"),
        ("POST", "/limit/sms"),
        ("GET", "/deliveries/00000000000000000000000000000000"),
        ("GET", "/no-such-route"),
    ] {
        let method: reqwest::Method = method.parse().unwrap();
        for auth in [
            None,
            Some(("app", "wrong")),
            Some(("someone", "s3cret-pass")),
            Some(("app", "")),
        ] {
            let mut req = t
                .client
                .request(method.clone(), url(path))
                .body(body.clone());
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert!(
                res.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic")
            );
            let v: serde_json::Value = res.json_text().await;
            assert_eq!(v["status_code"], "unauthorized");
        }
    }
    // A garbled header is simply unauthorised.
    let res = t
        .client
        .post(url("/sms"))
        .header("authorization", "Basic %%%")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    for path in ["/health", "/ready"] {
        assert_eq!(
            t.client.get(url(path)).send().await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }

    let res = t
        .client
        .post(url("/sms"))
        .basic_auth("app", Some("s3cret-pass"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = t
        .client
        .get(url("/sms/check"))
        .basic_auth("app", Some("s3cret-pass"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json_text().await, json!({"status": true}));
}

trait JsonText {
    async fn json_text(self) -> serde_json::Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> serde_json::Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}
