//! A real otpd on a free loopback port, with an injected clock and the console
//! provider's output captured, and a small HTTP client for it.

use std::io::Write;
use std::path::{Path, PathBuf};
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

/// Which store the suite runs against: SQLite, or (with `OTPD_TEST_STORE=redis`) a
/// Redis every test shares under a key prefix of its own.
#[derive(Clone)]
pub enum TestStore {
    Sqlite,
    Redis { url: String, prefix: String },
}

/// Replicas on a Redis store must share the key; tests use this one.
pub const REDIS_SECRET: &str = "a-test-secret-shared-by-every-replica-0123";

impl TestStore {
    pub fn chosen() -> TestStore {
        match std::env::var("OTPD_TEST_STORE").as_deref() {
            Ok("redis") => TestStore::redis(crate::redis_server::shared_url()),
            _ => TestStore::Sqlite,
        }
    }

    /// A fresh namespace on the Redis at `url`.
    pub fn redis(url: String) -> TestStore {
        let prefix = format!("t{:016x}", rand_u64());
        TestStore::Redis { url, prefix }
    }

    fn args(&self, dir: &std::path::Path) -> Vec<String> {
        match self {
            TestStore::Sqlite => vec![
                "--store".into(),
                format!("sqlite://{}", dir.join("otpd.db").display()),
            ],
            TestStore::Redis { url, prefix } => vec![
                "--store".into(),
                url.clone(),
                "--redis-prefix".into(),
                prefix.clone(),
                "--secret".into(),
                REDIS_SECRET.into(),
            ],
        }
    }

    fn redis_conn(&self) -> Option<(redis::Connection, String)> {
        match self {
            TestStore::Sqlite => None,
            TestStore::Redis { url, prefix } => {
                let client = redis::Client::open(url.as_str()).unwrap();
                Some((client.get_connection().unwrap(), prefix.clone()))
            }
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

pub struct TestApp {
    app: Option<App>,
    pub store: TestStore,
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
        TestApp::spawn_on(TestStore::chosen(), args).await
    }

    pub async fn spawn_on(store: TestStore, args: &[&str]) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let clock = ManualClock::starting_at(SystemClock.now());
        let args = args.iter().map(|s| s.to_string()).collect();
        TestApp::start(store, dir, clock, Captured::default(), args).await
    }

    /// Another replica on the same store, clock and settings, with its own console.
    pub async fn replica(&self) -> TestApp {
        self.replica_with(&[]).await
    }

    /// A replica with settings added to this one's.
    pub async fn replica_with(&self, more: &[&str]) -> TestApp {
        let mut args = self.args.clone();
        args.extend(more.iter().map(|s| s.to_string()));
        TestApp::start(
            self.store.clone(),
            Arc::new(tempfile::tempdir().unwrap()),
            self.clock.clone(),
            Captured::default(),
            args,
        )
        .await
    }

    async fn start(
        store: TestStore,
        dir: Arc<tempfile::TempDir>,
        clock: Arc<ManualClock>,
        console: Captured,
        args: Vec<String>,
    ) -> TestApp {
        let config = Cli::try_parse_from(argv(&store, dir.path(), &args))
            .unwrap()
            .config;
        let deps = Deps {
            clock: clock.clone(),
            console: ConsoleOut::to(console.clone()),
        };
        let app = App::start(config, deps).await.unwrap();
        TestApp {
            base: format!("http://{}", app.local_addr()),
            app: Some(app),
            store,
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
        let config = match Cli::try_parse_from(argv(&TestStore::chosen(), dir.path(), &args)) {
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

    /// Like `restart`, with `change` made to the stopped server's data directory.
    pub async fn restart_after(self, change: impl FnOnce(&Path)) -> TestApp {
        let args = self.args.clone();
        self.relaunch(args, change).await
    }

    /// Like `restart`, with other settings.
    pub async fn restart_with(self, args: Vec<String>) -> TestApp {
        self.relaunch(args, |_| {}).await
    }

    async fn relaunch(mut self, args: Vec<String>, change: impl FnOnce(&Path)) -> TestApp {
        self.app.take().unwrap().shutdown().await;
        change(self.dir.path());
        TestApp::start(
            self.store.clone(),
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

    /// The one value `sql` reads from the SQLite database, opened beside the running otpd.
    pub fn db_value<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> T {
        let db = rusqlite::Connection::open(self.db_path()).unwrap();
        db.query_row(sql, params, |r| r.get(0)).unwrap()
    }

    pub fn on_sqlite(&self) -> bool {
        matches!(self.store, TestStore::Sqlite)
    }

    /// Whether a test that looks inside SQLite itself applies; says so when it does not.
    pub fn sqlite_only(&self, test: &str) -> bool {
        if !self.on_sqlite() {
            eprintln!("{test}: checks SQLite's own behaviour; not run on this store");
        }
        self.on_sqlite()
    }

    /// The stored message of a delivery job; `None` once erased.
    pub fn stored_message(&self, id: &str) -> Option<String> {
        match self.store.redis_conn() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                db.query_row("SELECT payload FROM deliveries WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap()
            }
            Some((mut conn, prefix)) => {
                ["sms", "call", "email", "telegram"].iter().find_map(|ch| {
                    redis::cmd("HGET")
                        .arg(format!("{{{prefix}:{ch}}}:job:{id}"))
                        .arg("msg")
                        .query::<Option<String>>(&mut conn)
                        .unwrap()
                })
            }
        }
    }

    /// Overwrites a job's stored message with something unreadable.
    pub fn corrupt_message(&self, id: &str) {
        match self.store.redis_conn() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                db.execute(
                    "UPDATE deliveries SET payload = 'not json' WHERE id = ?1",
                    [id],
                )
                .unwrap();
            }
            Some((mut conn, prefix)) => {
                for ch in ["sms", "call", "email", "telegram"] {
                    let job = format!("{{{prefix}:{ch}}}:job:{id}");
                    let held: bool = redis::cmd("HEXISTS")
                        .arg(&job)
                        .arg("msg")
                        .query(&mut conn)
                        .unwrap();
                    if held {
                        let _: () = redis::cmd("HSET")
                            .arg(&job)
                            .arg("msg")
                            .arg("not json")
                            .query(&mut conn)
                            .unwrap();
                    }
                }
            }
        }
    }

    /// Damages what Redis keeps of every target whose key ends in `phone` (its round of
    /// guesses ends at no time at all), so that the check script fails on it.
    pub fn corrupt_redis_target(&self, phone: &str) {
        let (mut conn, prefix) = self.store.redis_conn().expect("a Redis store");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*}}:target:*{phone}"))
            .query(&mut conn)
            .unwrap();
        assert!(!keys.is_empty(), "no target key for {phone}");
        for key in keys {
            let _: () = redis::cmd("HSET")
                .arg(&key)
                .arg("until")
                .arg("never")
                .query(&mut conn)
                .unwrap();
        }
    }

    /// Stores unreadable IP limit rules for `channel`.
    pub fn corrupt_limit_rules(&self, channel: &str) {
        match self.store.redis_conn() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                db.execute(
                    "INSERT INTO limit_rules (channel, kind, rules) VALUES (?1, 'ip', 'not json')",
                    [channel],
                )
                .unwrap();
            }
            Some((mut conn, prefix)) => {
                let _: () = redis::cmd("HSET")
                    .arg(format!("{{{prefix}:{channel}}}:rules"))
                    .arg("ip")
                    .arg("not json")
                    .query(&mut conn)
                    .unwrap();
            }
        }
    }

    /// `(state, error)` of every delivery job, sorted.
    pub fn delivery_states(&self) -> Vec<(String, Option<String>)> {
        let mut states: Vec<(String, Option<String>)> = match self.store.redis_conn() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                let mut rows = db.prepare("SELECT state, error FROM deliveries").unwrap();
                rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Some((mut conn, prefix)) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{prefix}:*}}:job:*"))
                    .query(&mut conn)
                    .unwrap();
                keys.iter()
                    .map(|k| {
                        redis::cmd("HMGET")
                            .arg(k)
                            .arg("state")
                            .arg("error")
                            .query::<(String, Option<String>)>(&mut conn)
                            .unwrap()
                    })
                    .collect()
            }
        };
        states.sort();
        states
    }

    /// Everything the store holds, as text: to show what is (not) kept.
    pub fn raw_contents(&self) -> String {
        match self.store.redis_conn() {
            None => {
                let db = rusqlite::Connection::open(self.db_path()).unwrap();
                let mut out = String::new();
                for table in [
                    "targets",
                    "sends",
                    "limit_rules",
                    "deliveries",
                    "link_codes",
                ] {
                    let mut rows = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
                    let n = rows.column_count();
                    let mut q = rows.query([]).unwrap();
                    while let Some(row) = q.next().unwrap() {
                        for i in 0..n {
                            let v: rusqlite::types::Value = row.get(i).unwrap();
                            out.push_str(&format!("{v:?} "));
                        }
                        out.push('\n');
                    }
                }
                out
            }
            Some((mut conn, prefix)) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{prefix}:*"))
                    .query(&mut conn)
                    .unwrap();
                let mut out = String::new();
                for key in keys {
                    let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                    // The outbox stream exists as soon as a worker looked at it.
                    if kind == "stream"
                        && redis::cmd("XLEN")
                            .arg(&key)
                            .query::<u64>(&mut conn)
                            .unwrap()
                            == 0
                    {
                        continue;
                    }
                    let value: redis::Value = match kind.as_str() {
                        "string" => redis::cmd("GET").arg(&key).query(&mut conn),
                        "hash" => redis::cmd("HGETALL").arg(&key).query(&mut conn),
                        "list" => redis::cmd("LRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .query(&mut conn),
                        "zset" => redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .query(&mut conn),
                        _ => redis::cmd("XRANGE")
                            .arg(&key)
                            .arg("-")
                            .arg("+")
                            .query(&mut conn),
                    }
                    .unwrap();
                    out.push_str(&format!("{key} {value:?}\n"));
                }
                out
            }
        }
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

    /// A delivery's state and how many attempts it has had, to assert both at once.
    pub fn state_and_attempts(d: &Value) -> (Option<&str>, Option<u64>) {
        (d["state"].as_str(), d["attempts"].as_u64())
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

/// Sends `count` requests concurrently (at most 200 in flight, each on a connection of
/// its own while in flight), spread over the replicas; each answers its `status_code`
/// (or `success` when it is a yes), in the order they were made.
pub async fn all_at_once(
    replicas: &[TestApp],
    count: usize,
    method: reqwest::Method,
    path: &str,
    body: impl Fn(usize) -> Value,
) -> Vec<String> {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(200));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..count {
        let replica = &replicas[i % replicas.len()];
        let request = replica
            .client
            .request(method.clone(), format!("{}{path}", replica.base))
            .json(&body(i));
        let in_flight = in_flight.clone();
        requests.spawn(async move {
            let _slot = in_flight.acquire_owned().await.unwrap();
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            let outcome = answer["status_code"]
                .as_str()
                .unwrap_or("success")
                .to_owned();
            (i, outcome)
        });
    }
    let mut answers = requests.join_all().await;
    answers.sort();
    answers.into_iter().map(|(_, outcome)| outcome).collect()
}

/// The command line of a test server: a free loopback port, the store, then `args`.
fn argv(store: &TestStore, dir: &std::path::Path, args: &[String]) -> Vec<String> {
    let mut argv = vec!["otpd".to_string(), "--listen".into(), "127.0.0.1:0".into()];
    argv.extend(store.args(dir));
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
