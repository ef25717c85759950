//! The HTTP edge: parses requests, calls the domain, answers in the brief's envelope.

mod auth;
pub mod error;
mod idempotency;
mod limits;
mod metrics;
pub mod openapi;
mod otp;
pub mod params;
mod routes;
mod status;
mod telegram;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;

pub use auth::BasicAuth;
use error::ApiError;
pub use routes::{routes, spec};
pub use telegram::WebhookSettings;

use crate::clock::Clock;
use crate::logs::AccessLine;
use crate::metrics::Metrics;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
use crate::domain::link::TelegramLink;
use crate::domain::service::OtpService;
use crate::store::SharedStore;

/// What the handlers use, behind one `Arc`: axum clones the state for every request,
/// and cloning six `Arc`s (then dropping them) showed in the profile.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub otp: Arc<OtpService>,
    pub link: Arc<TelegramLink>,
    pub webhook: Arc<WebhookSettings>,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// The address a request came from, over plain TCP or TLS alike.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Only `GET /metrics`, for `OTP_METRICS_LISTEN`: a listener of its own, without auth.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::NotFound("only /metrics is served here") })
        .with_state(state)
}

pub fn router(state: AppState, auth: Option<BasicAuth>) -> Router {
    let (router, _) = routes().finish();
    let metrics = state.metrics.clone();
    let mut router = router
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    if let Some(auth) = auth {
        router = router.layer(middleware::from_fn_with_state(
            Arc::new(auth),
            auth::require,
        ));
    }
    router.layer(middleware::from_fn_with_state(metrics, access_log))
}

/// A caller's `X-Request-Id` is kept when it is short and plain; otherwise one is made.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()))
}

/// Whether the declared body is larger than the route takes: 413 on every route,
/// including those that never read their body.
fn too_large(req: &Request) -> bool {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = if req.uri().path() == telegram::WEBHOOK_PATH {
        telegram::MAX_UPDATE_BYTES
    } else {
        params::MAX_BODY_BYTES
    };
    declared.is_some_and(|len| len > limit as u64)
}

/// One line per request, with the request id (returned as `X-Request-Id`), counted in
/// `otpd_http_requests_total`. The query string is left out: it may hold a password.
/// Oversized bodies are refused here too: each middleware layer costs every request a
/// boxed service and future (profiled).
async fn access_log(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let method = req.method().clone();
    // Named before routing, so that answers given before it (401, 413) are named too.
    let route = routes::route_of(req.uri().path()).unwrap_or("unmatched");
    let mut response = if too_large(&req) {
        ApiError::PayloadTooLarge.into_response()
    } else {
        next.run(req).await
    };
    let status = response.status();
    metrics.count(
        "otpd_http_requests_total",
        &[("route", route), ("status", status.as_str())],
    );
    if tracing::enabled!(target: AccessLine::TARGET, tracing::Level::INFO) {
        let line = AccessLine {
            request_id: &id,
            method: method.as_str(),
            route,
            status: status.as_u16(),
            latency_us: started.elapsed().as_micros() as u64,
        };
        line.log();
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
