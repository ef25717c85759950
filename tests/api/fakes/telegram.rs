//! A fake Telegram Bot API on a loopback port: `POST /bot{TOKEN}/{method}` with
//! a JSON body, answered in the Bot API envelope. It models the webhook
//! methods, `sendMessage`, `getMe` and `getUpdates` long polling closely
//! enough that a test sees what the bot sent and how it handles restarts.
//!
//! Calls with a wrong token get 401 and are not recorded; every other call is
//! recorded (unknown methods too) before it is answered. Like Telegram,
//! `getUpdates` fails with 409 while a webhook is set, and a long poll still
//! waiting is ended with 409 by any later `getUpdates`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long `wait_for_calls` waits before declaring the test broken.
const SAFETY_TIMEOUT: Duration = Duration::from_secs(10);

/// Unconfirmed updates, and a count of `getUpdates` calls so a waiting long
/// poll notices it was superseded; a watch so long polls wake on either.
#[derive(Default)]
struct Queue {
    updates: Vec<Value>,
    polls: u64,
}

#[derive(Default)]
struct Bot {
    last_message_id: i64,
    webhook_url: String,
    refusals: HashMap<String, (u16, String)>,
}

struct Shared {
    token: String,
    /// (method, body) in arrival order; a watch so waiters wake on each call.
    calls: watch::Sender<Vec<(String, Value)>>,
    queue: watch::Sender<Queue>,
    bot: Mutex<Bot>,
}

/// The fake server; dropping it aborts the server.
pub struct FakeBotApi {
    port: u16,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeBotApi {
    /// Starts on 127.0.0.1 with a free port, accepting only `token`.
    pub async fn start(token: &str) -> FakeBotApi {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            calls: watch::Sender::new(Vec::new()),
            queue: watch::Sender::new(Queue::default()),
            bot: Mutex::new(Bot::default()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeBotApi {
            port,
            shared,
            server,
        }
    }

    /// The base URL (the TELEGRAM_API_URL for otpd), without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues an update (a full Update object; the caller sets an integer
    /// "update_id") and wakes any waiting long poll.
    pub fn push_update(&self, update: Value) {
        assert!(update["update_id"].is_i64(), "no update_id: {update}");
        self.shared.queue.send_modify(|q| q.updates.push(update));
    }

    /// JSON bodies received for `method` ("sendMessage", "getUpdates", ...), in order.
    pub fn calls(&self, method: &str) -> Vec<Value> {
        let calls = self.shared.calls.borrow();
        calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Waits until at least `n` calls of `method` arrived and returns them;
    /// panics after a safety timeout, listing what did arrive.
    pub async fn wait_for_calls(&self, method: &str, n: usize) -> Vec<Value> {
        let mut arrivals = self.shared.calls.subscribe();
        let enough = |c: &Vec<(String, Value)>| c.iter().filter(|(m, _)| m == method).count() >= n;
        let waited = tokio::time::timeout(SAFETY_TIMEOUT, arrivals.wait_for(enough));
        if waited.await.is_err() {
            let seen = self.shared.calls.borrow().clone();
            panic!("expected {n} {method} calls within {SAFETY_TIMEOUT:?}, got {seen:#?}");
        }
        self.calls(method)
    }

    /// From now on `method` fails with this HTTP status / error_code and
    /// description (calls are still recorded).
    pub fn refuse(&self, method: &str, status: u16, description: &str) {
        let mut bot = self.shared.bot.lock().unwrap();
        bot.refusals
            .insert(method.to_owned(), (status, description.to_owned()));
    }
}

impl Drop for FakeBotApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn success(result: Value) -> Response {
    Json(json!({ "ok": true, "result": result })).into_response()
}

fn failure(status: u16, description: &str) -> Response {
    let body = json!({ "ok": false, "error_code": status, "description": description });
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// An integer parameter; Telegram also accepts numbers sent as strings.
fn int_param(params: &Value, name: &str) -> Option<i64> {
    let value = params.get(name)?;
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}

fn update_id(update: &Value) -> i64 {
    update["update_id"].as_i64().unwrap_or_default()
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().strip_prefix("/bot");
    let Some((token, method)) = path.and_then(|rest| rest.split_once('/')) else {
        return failure(404, "Not Found");
    };
    if token != shared.token {
        return failure(401, "Unauthorized");
    }
    let method = method.to_owned();
    // A body that is not a JSON object is recorded as a string and refused.
    let params = match body.trim_ascii() {
        b"" => json!({}),
        text => {
            serde_json::from_slice(text).unwrap_or_else(|_| json!(String::from_utf8_lossy(text)))
        }
    };
    let call = (method.clone(), params.clone());
    shared.calls.send_modify(|c| c.push(call));
    if !params.is_object() {
        return failure(400, "Bad Request: can't parse JSON object");
    }
    let refusal = shared.bot.lock().unwrap().refusals.get(&method).cloned();
    if let Some((status, description)) = refusal {
        return failure(status, &description);
    }
    if method == "getUpdates" {
        return get_updates(&shared, &params).await;
    }
    let mut bot = shared.bot.lock().unwrap();
    let drop_pending = params["drop_pending_updates"].as_bool() == Some(true);
    if drop_pending && (method == "setWebhook" || method == "deleteWebhook") {
        shared.queue.send_modify(|q| q.updates.clear());
    }
    match method.as_str() {
        "sendMessage" if params["text"].as_str().unwrap_or("").is_empty() => {
            failure(400, "Bad Request: message text is empty")
        }
        "sendMessage" => {
            bot.last_message_id += 1;
            let message = json!({
                "message_id": bot.last_message_id,
                "date": UNIX_EPOCH.elapsed().unwrap().as_secs(),
                "chat": { "id": params["chat_id"], "type": "private" },
                "text": params["text"],
            });
            success(message)
        }
        "setWebhook" | "deleteWebhook" => {
            let url = match method.as_str() {
                "setWebhook" => params["url"].as_str().unwrap_or(""),
                _ => "",
            };
            let description = match (bot.webhook_url.as_str(), url) {
                ("", "") => "Webhook is already deleted",
                (_, "") => "Webhook was deleted",
                (old, new) if old == new => "Webhook is already set",
                _ => "Webhook was set",
            };
            bot.webhook_url = url.to_owned();
            Json(json!({ "ok": true, "result": true, "description": description })).into_response()
        }
        "getWebhookInfo" => success(json!({
            "url": bot.webhook_url,
            "has_custom_certificate": false,
            "pending_update_count": shared.queue.borrow().updates.len(),
        })),
        "getMe" => success(json!({
            "id": 424242, "is_bot": true, "first_name": "Fake", "username": "fake_otp_bot",
        })),
        _ => failure(404, "Not Found"),
    }
}

/// `offset` confirms (forgets) every update below it (negative offsets are
/// not modelled). Answers at most `limit` (1..=100, default
/// 100) updates from `offset` on; with none and `timeout` > 0 it waits up to
/// `timeout` seconds for one. Updates stay queued until confirmed.
async fn get_updates(shared: &Shared, params: &Value) -> Response {
    if !shared.bot.lock().unwrap().webhook_url.is_empty() {
        let description = "Conflict: can't use getUpdates method while webhook is active; \
                           use deleteWebhook to delete the webhook first";
        return failure(409, description);
    }
    let offset = int_param(params, "offset");
    let limit = int_param(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = int_param(params, "timeout").unwrap_or(0).max(0) as u64;
    let from = offset.unwrap_or(i64::MIN);
    let mut generation = 0;
    shared.queue.send_modify(|q| {
        q.updates.retain(|u| update_id(u) >= from);
        q.polls += 1;
        generation = q.polls;
    });
    let mut queue = shared.queue.subscribe();
    let ready = |q: &Queue| q.polls != generation || q.updates.iter().any(|u| update_id(u) >= from);
    if timeout > 0 {
        // On timeout this falls through and answers the (empty) list.
        let _ = tokio::time::timeout(Duration::from_secs(timeout), queue.wait_for(ready)).await;
        if queue.borrow().polls != generation {
            let description = "Conflict: terminated by other getUpdates request; \
                               make sure that only one bot instance is running";
            return failure(409, description);
        }
    }
    let queue = queue.borrow();
    let pending = queue.updates.iter().filter(|u| update_id(u) >= from);
    let updates: Vec<Value> = pending.take(limit).cloned().collect();
    success(json!(updates))
}
