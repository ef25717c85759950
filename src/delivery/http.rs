//! What the HTTP providers share: one pooled client, and one reading of what an answer
//! means for the message (sent, worth retrying, refused for good).

use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode};

use super::ProviderError;

/// Provider answers are small; a larger one is cut, never buffered whole.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One client for every HTTP provider: connections are pooled across jobs. Redirects
/// are not followed: an API that redirects a credentialed POST is misconfigured. The
/// whole call's deadline is the worker's (`OTP_PROVIDER_TIMEOUT`), the same for every
/// provider; only connecting is bounded here too.
pub fn client(connect_timeout: Duration) -> Result<Client, String> {
    Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otpd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text, for error messages. Not cut here: the worker masks the code
    /// first and then bounds the length, so a cut cannot split a code past the mask.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Sends and reads the answer. Transport failures are retryable; the URL is left out of
/// every error, since some APIs (Telegram's) carry the credential in the path.
pub async fn send(request: RequestBuilder) -> Result<Reply, ProviderError> {
    send_capped(request, MAX_REPLY_BYTES).await
}

/// `send`, keeping at most `cap` bytes of the answer.
pub async fn send_capped(request: RequestBuilder, cap: usize) -> Result<Reply, ProviderError> {
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(Reply { status, body })
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off"
    } else {
        "the request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        ProviderError::Retryable(what.to_owned())
    } else {
        ProviderError::Retryable(format!("{what}: {detail}"))
    }
}

/// What a non-success status means for the message. 5xx, 408 and 429 are the provider's
/// trouble and may pass; 401 means our credentials were refused, which says nothing
/// about the message and lets the next provider try; any other 4xx refuses the message
/// itself (a bad number, a blocked chat), so retrying it is useless.
pub fn refusal(status: StatusCode, detail: String) -> ProviderError {
    let reason = if detail.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {detail}", status.as_u16())
    };
    let retryable = status.is_server_error()
        || status.is_redirection()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED
        );
    if retryable {
        ProviderError::Retryable(reason)
    } else {
        ProviderError::Permanent(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_as_the_message_s_fate() {
        let fate = |code| match refusal(StatusCode::from_u16(code).unwrap(), String::new()) {
            ProviderError::Retryable(_) => "retry",
            ProviderError::Permanent(_) => "fail",
        };
        for code in [500, 502, 503, 408, 429, 401, 302] {
            assert_eq!(fate(code), "retry", "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert_eq!(fate(code), "fail", "{code}");
        }
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, "bad number".into()).to_string(),
            "HTTP 400: bad number"
        );
    }
}
