//! `POST /telegram/webhook` (Telegram's updates) and `GET|POST /target` (a bot code
//! traded for its chat id).

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::error::{self, ApiError};
use super::otp::{ip, password};
use super::params::Params;
use super::{AppState, PeerAddr};
use crate::bot;
use crate::config::{Redacted, UpdatesMode};
use crate::domain::secret::constant_time_str_eq;
use crate::store::LinkLookupOutcome;

/// How the webhook route is set up.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub mode: UpdatesMode,
    pub secret: Option<Redacted>,
}

const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// A message with a long quoted reply is larger than any API request; refusing it would
/// make Telegram retry it for a day.
pub const MAX_UPDATE_BYTES: usize = 1024 * 1024;
pub const WEBHOOK_PATH: &str = "/telegram/webhook";

pub async fn webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match app.webhook.mode {
        UpdatesMode::Webhook => {}
        UpdatesMode::Polling => {
            return Err(ApiError::NotFound("the bot fetches its updates by polling"));
        }
        UpdatesMode::Off => {
            return Err(ApiError::NotFound(
                "the Telegram bot is off (TELEGRAM_UPDATES=off, or TELEGRAM_BOT_TOKEN is not set)",
            ));
        }
    }
    if let Some(secret) = &app.webhook.secret {
        let given = headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_str_eq(given, secret.0.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    let body = axum::body::to_bytes(body, MAX_UPDATE_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let update: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::InvalidBody("the body must be a Telegram Update in JSON"))?;
    let update_id =
        update
            .get("update_id")
            .and_then(Value::as_i64)
            .ok_or(ApiError::InvalidBody(
                "a Telegram Update has an integer update_id",
            ))?;
    // Only a store failure answers other than 200: Telegram then delivers it again.
    bot::handle(&app.link, update_id, &update).await?;
    Ok(error::ok())
}

#[derive(Serialize)]
struct TargetContent {
    target: String,
}

pub async fn target(
    State(app): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    params: Params,
) -> Result<Response, ApiError> {
    if let Some(channel) = params.text("channel")?
        && channel != "telegram"
    {
        return Err(ApiError::invalid(
            "channel",
            "must be telegram: only codes the bot sent can be traded for a target",
        ));
    }
    let password = password(&params)?.ok_or(ApiError::MissingParameter("password"))?;
    Ok(
        match app.link.take(&password, ip(&params)?, peer.ip()).await? {
            LinkLookupOutcome::Found(target) => error::ok_with(TargetContent { target }),
            LinkLookupOutcome::NotFound => error::refused(
                "invalid_password",
                "the password is wrong, expired or already used",
            ),
            LinkLookupOutcome::Limited(hit) => {
                return Err(ApiError::LimitReached {
                    status_code: "ip_limit",
                    subject: "ip",
                    rule: hit.rule.to_string(),
                    retry_after_secs: hit.retry_after_secs,
                });
            }
        },
    )
}
