//! `POST /{channel}` and `GET|POST /{channel}/check`.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;

use super::AppState;
use super::error::{self, ApiError};
use super::idempotency;
use super::params::Params;
use crate::domain::abuse::SendQuota;
use crate::domain::code::Password;
use crate::domain::message::Templates;
use crate::domain::service::{CreateRequest, OtpError};
use crate::domain::verification::CheckOutcome;
use crate::domain::{Channel, Target};

#[derive(Serialize)]
struct CreatedContent {
    id: String,
    expires_at: String,
}

fn target(params: &Params, channel: Channel) -> Result<Target, ApiError> {
    let field = channel.target_field();
    let raw = params
        .text_or_number(field)?
        .ok_or(ApiError::MissingParameter(field))?;
    Ok(Target::parse(channel, &raw)?)
}

pub(super) fn password(params: &Params) -> Result<Option<Password>, ApiError> {
    Ok(params
        .text_or_number("password")?
        .map(|p| Password::parse(&p))
        .transpose()?)
}

pub(super) fn ip(params: &Params) -> Result<Option<IpAddr>, ApiError> {
    params
        .text("ip")?
        .map(|raw| {
            raw.parse::<IpAddr>()
                .map_err(|_| ApiError::invalid("ip", "must be an IPv4 or IPv6 address"))
        })
        .transpose()
}

pub async fn create(
    State(app): State<AppState>,
    channel: Channel,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_of(&headers)?;
    match (key, params) {
        (Some(key), Ok(params)) => {
            let fingerprint = app.otp.request_fingerprint(channel, &params.canonical());
            let create = counted_create(&app, channel, Ok(params));
            idempotency::once(&app, channel, &key, &fingerprint, create).await
        }
        (_, params) => counted_create(&app, channel, params).await,
    }
}

/// A create, counted in the metrics by how it ended.
async fn counted_create(
    app: &AppState,
    channel: Channel,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    // A body that cannot be read is an invalid send too.
    let created = match params {
        Ok(params) => create_code(app, channel, params).await,
        Err(e) => Err(e),
    };
    let outcome = match &created {
        Ok(_) => Some("accepted"),
        Err(
            ApiError::LimitReached { .. }
            | ApiError::DailyCap { .. }
            | ApiError::PumpingSuspected(_),
        ) => Some("limited"),
        Err(ApiError::StoreUnavailable | ApiError::Internal) => None,
        Err(_) => Some("invalid"),
    };
    if let Some(outcome) = outcome {
        app.metrics.count(
            "otpd_sends_total",
            &[("channel", channel.as_str()), ("outcome", outcome)],
        );
    }
    if let Err(ApiError::LimitReached { subject, .. }) = &created {
        let kind = if *subject == "ip" { "ip" } else { "target" };
        app.metrics.count(
            "otpd_limit_rejections_total",
            &[("channel", channel.as_str()), ("kind", kind)],
        );
    }
    created
}

async fn create_code(
    app: &AppState,
    channel: Channel,
    params: Params,
) -> Result<Response, ApiError> {
    let target = target(&params, channel)?;
    let templates = match channel {
        Channel::Email => Templates {
            message: None,
            subject: params.text("subject")?,
            text: params.text("text")?,
            html: params.text("html")?,
        },
        _ => Templates {
            message: params.text("message")?,
            ..Templates::default()
        },
    };
    let request = CreateRequest {
        channel,
        target,
        password: password(&params)?,
        lifetime_secs: params.integer("lifetime")?,
        templates,
        ip: ip(&params)?,
    };
    let created = app.otp.create(request).await.map_err(|e| {
        if let Some(reason) = abuse_reason(&e) {
            app.metrics.count(
                "otpd_abuse_refusals_total",
                &[("channel", channel.as_str()), ("reason", reason)],
            );
        }
        ApiError::from(e)
    })?;
    Ok(error::ok_with(CreatedContent {
        id: created.delivery_id.to_string(),
        expires_at: created.expires_at.to_rfc3339(),
    }))
}

/// The reason a send was refused to protect the budget or an account, for the metrics.
fn abuse_reason(e: &OtpError) -> Option<&'static str> {
    match e {
        OtpError::PhoneRefused { refusal, .. } => Some(refusal.label()),
        OtpError::QuotaUsedUp { quota, .. } => Some(match quota {
            SendQuota::Cooldown => "cooldown",
            SendQuota::DailyCap => "daily_cap",
            SendQuota::DailyCapForCountry(_) => "daily_cap_country",
        }),
        OtpError::FailureBudgetSpent { .. } => Some("failure_budget"),
        OtpError::PumpingSuspected { .. } => Some("pumping"),
        _ => None,
    }
}

pub async fn check(
    State(app): State<AppState>,
    channel: Channel,
    params: Params,
) -> Result<Response, ApiError> {
    let target = target(&params, channel)?;
    let password = password(&params)?.ok_or(ApiError::MissingParameter("password"))?;
    let outcome = app
        .otp
        .check(channel, &target, &password, ip(&params)?)
        .await?;
    let label = match outcome {
        CheckOutcome::Verified => "ok",
        CheckOutcome::InvalidPassword => "invalid_password",
        CheckOutcome::AttemptsExceeded => "attempts_exceeded",
    };
    app.metrics.count(
        "otpd_checks_total",
        &[("channel", channel.as_str()), ("outcome", label)],
    );
    Ok(match outcome {
        CheckOutcome::Verified => error::ok(),
        CheckOutcome::InvalidPassword => error::refused(
            "invalid_password",
            "the password is wrong, expired or already used",
        ),
        CheckOutcome::AttemptsExceeded => error::refused(
            "attempts_exceeded",
            "too many wrong passwords; request a new one",
        ),
    })
}
