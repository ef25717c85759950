//! The HTTP edge: parses requests, calls the domain, answers in the brief's envelope.

mod auth;
pub mod error;
mod limits;
mod metrics;
mod otp;
pub mod params;
mod status;
mod telegram;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use auth::BasicAuth;
use error::ApiError;
use params::Params;
pub use telegram::WebhookSettings;

use crate::domain::Channel;
use crate::domain::link::TelegramLink;
use crate::domain::service::OtpService;
use crate::store::SharedStore;

#[derive(Clone)]
pub struct AppState {
    pub otp: Arc<OtpService>,
    pub link: Arc<TelegramLink>,
    pub webhook: Arc<WebhookSettings>,
    pub store: SharedStore,
}

pub fn router(state: AppState, auth: Option<BasicAuth>) -> Router {
    let mut router = Router::new()
        .route("/health", get(status::health))
        .route("/ready", get(status::ready))
        .route("/deliveries/{id}", get(status::delivery))
        .route("/metrics", get(metrics::metrics))
        .route(telegram::WEBHOOK_PATH, post(telegram::webhook))
        .route("/target", get(telegram::target).post(telegram::target));
    for ch in Channel::ALL {
        let check = move |s: State<AppState>, p: Params| otp::check(s, ch, p);
        let show_limits = move |s: State<AppState>| limits::show(s, ch);
        router = router
            .route(
                &format!("/{ch}"),
                post(move |s: State<AppState>, p: Params| otp::create(s, ch, p)),
            )
            .route(&format!("/{ch}/check"), get(check).post(check))
            .route(
                &format!("/limit/{ch}"),
                get(show_limits)
                    .post(move |s: State<AppState>, p: Params| limits::update(s, ch, p)),
            );
    }
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
    router
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(middleware::from_fn(access_log))
}

/// 413 on every route, including those that never read their body.
async fn refuse_large_bodies(req: Request, next: Next) -> Result<Response, ApiError> {
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
    match declared {
        Some(len) if len > limit as u64 => Err(ApiError::PayloadTooLarge),
        _ => Ok(next.run(req).await),
    }
}

/// One line per request. The query string is left out: it may hold a password.
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}
