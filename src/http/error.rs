//! The answer envelope and the one mapping from every error to an HTTP answer.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::InvalidField;
use crate::domain::abuse::SendQuota;
use crate::domain::limits::LimitKind;
use crate::domain::service::OtpError;
use crate::store::StoreError;

/// `{"status": bool, "status_code"?: string, "message"?: string, "content"?: object}`.
#[derive(Debug, Serialize)]
pub struct Envelope<C: Serialize> {
    pub status: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<C>,
}

/// `200 {"status": true}`.
pub fn ok() -> Response {
    Json(Envelope::<()> {
        status: true,
        status_code: None,
        message: None,
        content: None,
    })
    .into_response()
}

/// `200 {"status": true, "content": ...}`.
pub fn ok_with<C: Serialize>(content: C) -> Response {
    Json(Envelope {
        status: true,
        status_code: None,
        message: None,
        content: Some(content),
    })
    .into_response()
}

/// A well-formed request whose answer is "no" (a wrong code, say): `200 {"status": false}`.
pub fn refused(status_code: &'static str, message: &str) -> Response {
    Json(Envelope::<()> {
        status: false,
        status_code: Some(status_code),
        message: Some(message.to_owned()),
        content: None,
    })
    .into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("\"{0}\" parameter must be set")]
    MissingParameter(&'static str),
    #[error("\"{0}\" or \"{1}\" parameter must be set")]
    MissingOneOf(&'static str, &'static str),
    #[error("\"{field}\" {reason}")]
    InvalidParameter { field: String, reason: String },
    #[error("{0}")]
    InvalidBody(&'static str),
    #[error("Limits are reached: {subject} - {rule}")]
    LimitReached {
        status_code: &'static str,
        subject: &'static str,
        rule: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    DailyCap {
        message: String,
        retry_after_secs: u64,
    },
    #[error("codes to this {0} are held back: many are sent and few are verified")]
    PumpingSuspected(&'static str),
    #[error("the Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    #[error("a request with this Idempotency-Key is still running; retry shortly")]
    IdempotencyInProgress,
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("the store is unavailable, try again shortly")]
    StoreUnavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MissingParameter(_) | ApiError::MissingOneOf(..) => {
                (StatusCode::BAD_REQUEST, "missing_parameter")
            }
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::LimitReached { status_code, .. } => (StatusCode::BAD_REQUEST, status_code),
            ApiError::DailyCap { .. } => (StatusCode::BAD_REQUEST, "daily_cap"),
            ApiError::PumpingSuspected(_) => (StatusCode::BAD_REQUEST, "pumping_suspected"),
            ApiError::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_conflict"),
            ApiError::IdempotencyInProgress => (StatusCode::CONFLICT, "idempotency_in_progress"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        ApiError::invalid(e.field, e.reason)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The cause goes to the log only; the caller learns just that it was us.
        match e {
            StoreError::Unavailable(cause) => {
                tracing::error!(%cause, "store unavailable");
                ApiError::StoreUnavailable
            }
            StoreError::Internal(cause) => {
                tracing::error!(%cause, "store error");
                ApiError::Internal
            }
        }
    }
}

impl From<OtpError> for ApiError {
    fn from(e: OtpError) -> Self {
        match e {
            OtpError::Invalid(field) => field.into(),
            OtpError::IpRequired => ApiError::MissingParameter("ip"),
            OtpError::Limited { channel, kind, hit } => {
                let subject = match kind {
                    LimitKind::Ip | LimitKind::FailedLookup => "ip",
                    LimitKind::Target => channel.target_field(),
                };
                limit_reached(subject, hit.rule.to_string(), hit.retry_after_secs)
            }
            OtpError::PhoneRefused { channel, refusal } => {
                ApiError::invalid("phone", refusal.reason(channel))
            }
            OtpError::QuotaUsedUp {
                channel,
                quota,
                cooldown,
                retry_after_secs,
            } => {
                let codes = format!("{} codes", channel.as_str());
                let message = match quota {
                    SendQuota::Cooldown => {
                        return limit_reached(
                            channel.target_field(),
                            format!("1 in {} seconds", cooldown.as_secs()),
                            retry_after_secs,
                        );
                    }
                    SendQuota::DailyCap => format!("the daily cap of {codes} is reached"),
                    SendQuota::DailyCapForCountry(country) => {
                        format!("the daily cap of {codes} to {country} is reached")
                    }
                };
                ApiError::DailyCap {
                    message,
                    retry_after_secs,
                }
            }
            OtpError::PumpingSuspected { scope, .. } => ApiError::PumpingSuspected(scope),
            OtpError::FailureBudgetSpent {
                channel,
                budget,
                window,
                retry_after_secs,
            } => limit_reached(
                channel.target_field(),
                format!(
                    "{budget} wrong passwords in {} hours",
                    window.as_secs().div_ceil(3600)
                ),
                retry_after_secs,
            ),
            OtpError::Store(e) => e.into(),
        }
    }
}

/// The refusal of a send limit on `subject` ("ip" or the channel's target field).
fn limit_reached(subject: &'static str, rule: String, retry_after_secs: u64) -> ApiError {
    let status_code = match subject {
        "ip" => "ip_limit",
        "phone" => "phone_limit",
        "email" => "email_limit",
        _ => "chat_id_limit",
    };
    ApiError::LimitReached {
        status_code,
        subject,
        rule,
        retry_after_secs,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Envelope::<()> {
            status: false,
            status_code: Some(code),
            message: Some(self.to_string()),
            content: None,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::LimitReached {
                retry_after_secs, ..
            }
            | ApiError::DailyCap {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"otpd\", charset=\"UTF-8\""),
                );
            }
            ApiError::StoreUnavailable | ApiError::IdempotencyInProgress => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            _ => {}
        }
        response
    }
}
