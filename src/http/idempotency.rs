//! `Idempotency-Key` on creates: a repeat within 24 hours of a created code gets the
//! first answer again and sends nothing; the same key with a different request is a
//! `409`, and so is a repeat while the first is still running.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::domain::Channel;
use crate::store::IdempotencyBegin;

const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
const MAX_KEY_LEN: usize = 255;
/// How long an answer is given again.
const KEPT: Duration = Duration::from_secs(24 * 3600);
/// How long a request may run before its key counts as abandoned (its process died).
const PENDING: Duration = Duration::from_secs(60);
/// Create answers are small JSON envelopes.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// The request's key, if it carries one.
pub(super) fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            )
        })
}

/// An answer as kept for replays.
#[derive(Serialize, Deserialize)]
struct KeptAnswer {
    status: u16,
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<String>,
}

/// Runs `create` once per key and request; a repeat is answered from the store.
pub(super) async fn once(
    app: &AppState,
    channel: Channel,
    key: &str,
    fingerprint: &str,
    create: impl Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let now = app.clock.now();
    match app
        .store
        .begin_idempotent(channel, key, fingerprint, now, now.plus(PENDING))
        .await?
    {
        IdempotencyBegin::Proceed => {}
        IdempotencyBegin::Replay(kept) => return replay(&kept),
        IdempotencyBegin::Conflict => return Err(ApiError::IdempotencyConflict),
        IdempotencyBegin::InProgress => return Err(ApiError::IdempotencyInProgress),
    }
    let response = create.await.unwrap_or_else(IntoResponse::into_response);
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read back a create answer");
            ApiError::Internal
        })?;
    // Only a created code is an answer to keep. A refusal (a limit, a bad field) or a
    // failure of ours created nothing, and a later try may well succeed: the key is
    // freed for it rather than answering the old refusal for a day.
    let kept = if !parts.status.is_success() {
        None
    } else {
        let answer = KeptAnswer {
            status: parts.status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
            retry_after: parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        serde_json::to_string(&answer).ok()
    };
    let finished = app.clock.now();
    if let Err(e) = app
        .store
        .finish_idempotent(
            channel,
            key,
            fingerprint,
            kept,
            finished.plus(KEPT),
            finished,
        )
        .await
    {
        // The work is done; only its replay is lost (a repeat finds the key running
        // until it is abandoned, then runs again).
        tracing::warn!(error = %e, "could not keep the answer of an idempotent create");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(kept: &str) -> Result<Response, ApiError> {
    let answer: KeptAnswer = serde_json::from_str(kept).map_err(|e| {
        tracing::error!(error = %e, "a kept idempotent answer is unreadable");
        ApiError::Internal
    })?;
    let status = StatusCode::from_u16(answer.status).map_err(|_| ApiError::Internal)?;
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    if let Some(retry_after) = answer
        .retry_after
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::RETRY_AFTER, retry_after);
    }
    Ok(response)
}
