//! The few Bot API methods the bot itself calls (updates and webhook set-up).

use std::time::Duration;

use reqwest::Client;
use serde_json::Value;

use crate::config::{ConfigError, HttpUrl, ProviderSettings, Redacted};
use crate::delivery::ProviderError;
use crate::delivery::http;

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
    pub fn from_settings(settings: &ProviderSettings, why: &str) -> Result<Self, ConfigError> {
        let token = settings
            .telegram_bot_token()?
            .ok_or_else(|| ConfigError::new("TELEGRAM_BOT_TOKEN", format!("must be set {why}")))?;
        let client = http::client(settings.timeout())
            .map_err(|reason| ConfigError::new("OTP_PROVIDER_TIMEOUT", reason))?;
        Ok(BotApi {
            client,
            api: settings.telegram_api_url()?,
            token,
        })
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
