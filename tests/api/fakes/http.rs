//! A recording HTTP server on a loopback port with scripted answers: it stands
//! in for a provider API (SMS gateway, voice, Telegram ...) so a test can check
//! what otpd sent and make the provider fail, answer oddly or never answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long `wait_for_requests` waits before declaring the test broken.
const SAFETY_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics showing the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body decoded as `application/x-www-form-urlencoded`, order kept.
    pub fn form(&self) -> Vec<(String, String)> {
        self.text()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key), form_decode(value))
            })
            .collect()
    }

    /// The first form field called `key`.
    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Decodes one form component: `+` is a space, `%XX` a byte; a malformed
/// escape is kept literally so a test sees what was actually sent.
fn form_decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(|h| hex_pair(h[0], h[1])) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(digit(high)? * 16 + digit(low)?)
}

/// A scripted answer: status and JSON body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
}

/// What requests get once the one-off queue is empty.
#[derive(Debug, Clone)]
enum Fallback {
    Answer(Answer),
    Hang,
}

struct Shared {
    /// Every request, in arrival order; a watch so waiters wake on each arrival.
    requests: watch::Sender<Vec<Recorded>>,
    once: Mutex<VecDeque<Answer>>,
    /// A watch so requests hanging in `Fallback::Hang` wake when it changes.
    fallback: watch::Sender<Fallback>,
}

/// The fake server; it stops accepting connections when dropped.
pub struct FakeHttp {
    port: u16,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeHttp {
    /// Starts on 127.0.0.1 with a free port; answers 200 `{}` until told otherwise.
    pub async fn start() -> FakeHttp {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            requests: watch::Sender::new(Vec::new()),
            once: Mutex::new(VecDeque::new()),
            fallback: watch::Sender::new(Fallback::Answer(Answer {
                status: 200,
                body: "{}".to_owned(),
            })),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeHttp {
            port,
            shared,
            server,
        }
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the answer used once the one-off queue is empty. Requests left
    /// hanging by [`FakeHttp::hang`] are released with this answer too.
    pub fn respond(&self, status: u16, body: &str) {
        let answer = Answer {
            status,
            body: body.to_owned(),
        };
        self.shared.fallback.send_replace(Fallback::Answer(answer));
    }

    /// Queues an answer for one request; queued answers go first, in FIFO order.
    pub fn respond_once(&self, status: u16, body: &str) {
        self.shared.once.lock().unwrap().push_back(Answer {
            status,
            body: body.to_owned(),
        });
    }

    /// From now on requests are recorded but not answered (after any queued
    /// one-off answers are used up), until [`FakeHttp::respond`] is called.
    pub fn hang(&self) {
        self.shared.fallback.send_replace(Fallback::Hang);
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.borrow().clone()
    }

    /// Waits until at least `n` requests arrived; panics after a safety
    /// timeout, listing what did arrive.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let mut arrivals = self.shared.requests.subscribe();
        let waited = tokio::time::timeout(SAFETY_TIMEOUT, arrivals.wait_for(|r| r.len() >= n));
        if waited.await.is_err() {
            let seen: Vec<String> = self
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            panic!("expected {n} requests within {SAFETY_TIMEOUT:?}, got {seen:?}");
        }
        self.requests()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A loopback URL on which nothing listens, so connecting is refused: the port
/// was free a moment ago and is released again at once.
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Records the request first, so even one that is never answered is visible,
/// then picks the answer: a queued one-off, else the fallback.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    shared.requests.send_modify(|all| all.push(recorded));

    let queued = shared.once.lock().unwrap().pop_front();
    let answer = match queued {
        Some(answer) => answer,
        None => {
            let mut fallback = shared.fallback.subscribe();
            let fallback = fallback.wait_for(|f| matches!(f, Fallback::Answer(_)));
            match fallback.await.unwrap().clone() {
                Fallback::Answer(answer) => answer,
                Fallback::Hang => unreachable!("wait_for only returns answers"),
            }
        }
    };
    Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(answer.body))
        .unwrap()
}
