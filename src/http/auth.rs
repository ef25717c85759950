//! HTTP Basic auth for every route except the probes and Telegram's webhook (Telegram
//! cannot send credentials; it has its own secret token).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::error::ApiError;
use crate::domain::secret::constant_time_str_eq;

const EXEMPT: [&str; 3] = ["/health", "/ready", "/telegram/webhook"];

pub struct BasicAuth {
    username: String,
    password: String,
}

impl BasicAuth {
    pub fn new(username: &str, password: &str) -> Self {
        BasicAuth {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both halves are always compared, so timing does not tell which one was wrong.
        let user_ok = constant_time_str_eq(user, self.username.as_bytes());
        let pass_ok = constant_time_str_eq(pass, self.password.as_bytes());
        user_ok & pass_ok
    }
}

pub async fn require(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    if EXEMPT.contains(&req.uri().path()) || auth.accepts(req.headers()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}
