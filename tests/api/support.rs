//! A real otpd on a free loopback port, with an injected clock and the console
//! provider's output captured, and a small HTTP client for it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use otpd::clock::{Clock, ManualClock, SystemClock};
use otpd::config::Cli;
use otpd::delivery::ConsoleOut;
use otpd::{App, Deps};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `status_code` of the envelope, or "" when there is none.
    pub fn code(&self) -> &str {
        self.body["status_code"].as_str().unwrap_or("")
    }

    pub fn ok(&self) -> bool {
        self.status == StatusCode::OK && self.body["status"] == Value::Bool(true)
    }
}

pub struct TestApp {
    app: Option<App>,
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub console: Captured,
    pub dir: Arc<tempfile::TempDir>,
    args: Vec<String>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(&[]).await
    }

    pub async fn spawn_with(args: &[&str]) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let clock = ManualClock::starting_at(SystemClock.now());
        let args = args.iter().map(|s| s.to_string()).collect();
        TestApp::start(dir, clock, Captured::default(), args).await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        clock: Arc<ManualClock>,
        console: Captured,
        args: Vec<String>,
    ) -> TestApp {
        let config = Cli::try_parse_from(argv(dir.path(), &args)).unwrap().config;
        let deps = Deps {
            clock: clock.clone(),
            console: ConsoleOut::to(console.clone()),
        };
        let app = App::start(config, deps).await.unwrap();
        TestApp {
            base: format!("http://{}", app.local_addr()),
            app: Some(app),
            client: reqwest::Client::new(),
            clock,
            console,
            dir,
            args,
        }
    }

    /// Tries to start with `args`, which must be refused; returns the reason.
    pub async fn start_error(args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let config = match Cli::try_parse_from(argv(dir.path(), &args)) {
            Ok(cli) => cli.config,
            Err(e) => return e.to_string(),
        };
        match App::start(config, Deps::default()).await {
            Ok(_) => panic!("otpd started with {args:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Stops the server cleanly and starts a new one on the same data directory.
    pub async fn restart(self) -> TestApp {
        let args = self.args.clone();
        self.restart_with(args).await
    }

    /// Like `restart`, with other settings.
    pub async fn restart_with(mut self, args: Vec<String>) -> TestApp {
        self.app.take().unwrap().shutdown().await;
        TestApp::start(
            self.dir.clone(),
            self.clock.clone(),
            self.console.clone(),
            args,
        )
        .await
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("otpd.db")
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, String)>,
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path_and_query));
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, json: Value) -> Answer {
        self.send_json(Method::POST, path, json).await
    }

    /// A POST that must succeed; returns the answer's `content`.
    pub async fn post_ok(&self, path: &str, json: Value) -> Value {
        let a = self.post(path, json).await;
        assert!(a.ok(), "POST {path}: {} {:?}", a.status, a.body);
        a.body["content"].clone()
    }

    /// `GET /{channel}/check`: "ok", or the `status_code` of the refusal.
    pub async fn check_outcome(&self, channel: &str, json: Value) -> String {
        let a = self.get_with_body(&format!("/{channel}/check"), json).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        if a.ok() {
            "ok".into()
        } else {
            a.code().to_owned()
        }
    }

    /// GET with a JSON body, exactly as the brief's examples are written.
    pub async fn get_with_body(&self, path: &str, json: Value) -> Answer {
        self.send_json(Method::GET, path, json).await
    }

    async fn send_json(&self, method: Method, path: &str, json: Value) -> Answer {
        let body = ("application/json", json.to_string());
        self.send(method, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    /// `GET /deliveries/{id}`'s content.
    pub async fn delivery(&self, id: &str) -> Value {
        let a = self.get(&format!("/deliveries/{id}")).await;
        assert!(a.ok(), "{:?}", a.body);
        a.body["content"].clone()
    }

    /// Waits until the delivery's status satisfies `done` (the worker runs on its own
    /// task, so this polls the API; the clock is never moved here), and returns it.
    pub async fn delivery_when(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..1000 {
            last = self.delivery(id).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("delivery {id} never reached the awaited state; last seen: {last}");
    }

    /// Waits until the worker has finished the delivery, and returns its status.
    pub async fn finished_delivery(&self, id: &str) -> Value {
        self.delivery_when(id, |d| {
            !matches!(d["state"].as_str(), Some("queued" | "sending"))
        })
        .await
    }

    /// Waits until the delivery has been tried `n` times and is waiting for its next try,
    /// or has ended (a job can expire before its next try).
    pub async fn attempted(&self, id: &str, n: u64) -> Value {
        self.delivery_when(id, |d| {
            let state = d["state"].as_str().unwrap_or_default();
            (d["attempts"].as_u64() == Some(n) && state != "sending")
                || matches!(state, "sent" | "failed" | "expired")
        })
        .await
    }

    /// Creates a code and returns the code that was sent (read from the console
    /// provider's output), for requests that let otpd generate it.
    pub async fn create_and_read_code(&self, channel: &str, body: Value) -> String {
        let created = self.post_ok(&format!("/{channel}"), body).await;
        let d = self
            .finished_delivery(created["id"].as_str().unwrap())
            .await;
        assert_eq!(d["state"], "sent");
        let line = self.console.lines().pop().unwrap();
        last_code_in(&line)
    }
}

/// The command line of a test server: a free loopback port, a store in `dir`, then `args`.
fn argv(dir: &std::path::Path, args: &[String]) -> Vec<String> {
    let db = dir.join("otpd.db");
    let mut argv = vec![
        "otpd".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--store".into(),
        format!("sqlite://{}", db.display()),
    ];
    argv.extend(args.iter().cloned());
    argv
}

/// The last run of digits in a console line: the code in the default templates. Single
/// spaces between digits are skipped, since calls speak the code digit by digit.
pub fn last_code_in(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut end = chars.len();
    while end > 0 && !chars[end - 1].is_ascii_digit() {
        end -= 1;
    }
    let mut digits = Vec::new();
    let mut i = end;
    while i > 0 && chars[i - 1].is_ascii_digit() {
        digits.push(chars[i - 1]);
        i -= 1;
        if i > 1 && chars[i - 1] == ' ' && chars[i - 2].is_ascii_digit() {
            i -= 1;
        }
    }
    digits.iter().rev().collect()
}
