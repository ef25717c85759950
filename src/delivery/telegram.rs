//! The Telegram Bot API: one client for the `telegram` provider's `sendMessage` and for
//! the bot's own calls (updates, webhook set-up).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use super::http;
use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, HttpUrl, ProviderSettings, Redacted};
use crate::domain::message::MessageContent;

/// A batch of updates with long messages is far larger than a provider's answer.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BotApiError {
    #[error("cannot reach the Telegram Bot API: {0}")]
    Transport(String),
    #[error("Telegram refused {method}: {description}")]
    Refused {
        method: &'static str,
        status: u16,
        description: String,
    },
    #[error("Telegram's answer to {method} was not understood")]
    Unexpected { method: &'static str },
}

pub struct BotApi {
    client: Client,
    api: HttpUrl,
    token: Redacted,
}

impl BotApi {
    /// Needs `TELEGRAM_BOT_TOKEN`; `why` says what for, in the error when it is missing.
    pub fn from_settings(
        settings: &ProviderSettings,
        client: Client,
        why: &str,
    ) -> Result<Self, ConfigError> {
        let token = settings
            .telegram_bot_token()?
            .ok_or_else(|| ConfigError::new("TELEGRAM_BOT_TOKEN", format!("must be set {why}")))?;
        // The token becomes part of the URL path; anything else there would change the path.
        if !token
            .0
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            return Err(ConfigError::new(
                "TELEGRAM_BOT_TOKEN",
                "does not look like a bot token (digits, ':' and letters)",
            ));
        }
        Ok(BotApi {
            client,
            api: settings.telegram_api_url()?,
            token,
        })
    }

    /// `from_settings` with a client of its own, for the bot and the CLI.
    pub fn standalone(settings: &ProviderSettings, why: &str) -> Result<Self, ConfigError> {
        let client = http::client(settings.timeout())
            .map_err(|reason| ConfigError::new("OTP_PROVIDER_TIMEOUT", reason))?;
        BotApi::from_settings(settings, client, why)
    }

    /// Calls `method` and returns its `result`. The token is in the URL path, so no
    /// error here ever includes the URL.
    pub async fn call(
        &self,
        method: &'static str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, BotApiError> {
        let url = self.api.join(&format!("/bot{}/{method}", self.token.0));
        let request = self.client.post(url).json(body).timeout(timeout);
        let reply = http::send_capped(request, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                ProviderError::Retryable(reason) | ProviderError::Permanent(reason) => {
                    BotApiError::Transport(reason)
                }
            })?;
        // The Bot API answers {"ok": true, "result": ...} or
        // {"ok": false, "error_code": 400, "description": "..."}.
        let answer = reply.json().ok_or(BotApiError::Unexpected { method })?;
        if answer["ok"].as_bool() == Some(true) {
            return Ok(answer["result"].clone());
        }
        let description = answer["description"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", reply.status.as_u16()));
        Err(BotApiError::Refused {
            method,
            status: reply.status.as_u16(),
            description,
        })
    }
}

/// The `telegram` provider: `sendMessage` as the bot whose token is configured.
pub struct TelegramProvider {
    api: BotApi,
    timeout: Duration,
}

impl TelegramProvider {
    pub fn from_settings(settings: &ProviderSettings, client: Client) -> Result<Self, ConfigError> {
        Ok(TelegramProvider {
            api: BotApi::from_settings(settings, client, "to use telegram")?,
            timeout: settings.timeout(),
        })
    }
}

#[async_trait]
impl Provider for TelegramProvider {
    fn name(&self) -> &'static str {
        "telegram"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let MessageContent::Text { text } = &job.content else {
            return Err(ProviderError::Permanent(
                "telegram sends only text messages".into(),
            ));
        };
        let chat_id: i64 = job.target.parse().map_err(|_| {
            ProviderError::Permanent(format!("{:?} is not a Telegram chat id", job.target))
        })?;
        let body = json!({ "chat_id": chat_id, "text": text });
        match self.api.call("sendMessage", &body, self.timeout).await {
            Ok(sent) => Ok(Receipt {
                message_id: sent["message_id"].as_i64().map(|id| id.to_string()),
            }),
            Err(BotApiError::Transport(reason)) => Err(ProviderError::Retryable(reason)),
            Err(e @ BotApiError::Unexpected { .. }) => Err(ProviderError::Retryable(e.to_string())),
            // 403 is "the bot was blocked by the user" or "the user is deactivated": final.
            Err(BotApiError::Refused {
                status: 403,
                description,
                ..
            }) => Err(ProviderError::Permanent(format!("HTTP 403: {description}"))),
            Err(BotApiError::Refused {
                status,
                description,
                ..
            }) => Err(http::refusal(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                description,
            )),
        }
    }
}
