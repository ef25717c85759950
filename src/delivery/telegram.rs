//! Telegram: the Bot API's `sendMessage`, as the bot whose token is configured.

use async_trait::async_trait;
use reqwest::{Client, StatusCode};

use super::http::{self, Reply};
use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, HttpUrl, ProviderSettings, Redacted};
use crate::domain::message::MessageContent;

pub struct TelegramProvider {
    client: Client,
    api: HttpUrl,
    token: Redacted,
}

impl TelegramProvider {
    pub fn from_settings(settings: &ProviderSettings, client: Client) -> Result<Self, ConfigError> {
        let token = settings
            .telegram_bot_token()?
            .ok_or_else(|| ConfigError::new("TELEGRAM_BOT_TOKEN", "must be set to use telegram"))?;
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
        Ok(TelegramProvider {
            client,
            api: settings.telegram_api_url()?,
            token,
        })
    }
}

/// The Bot API answers errors as `{"ok": false, "error_code": 400, "description": "..."}`.
fn telegram_reason(reply: &Reply) -> String {
    reply
        .json()
        .and_then(|b| b["description"].as_str().map(str::to_owned))
        .unwrap_or_else(|| reply.excerpt())
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
        let url = self.api.join(&format!("/bot{}/sendMessage", self.token.0));
        let body = serde_json::json!({ "chat_id": chat_id, "text": text });
        let reply = http::send(self.client.post(url).json(&body)).await?;
        let answer = reply.json();
        let accepted = answer.as_ref().and_then(|b| b["ok"].as_bool()) == Some(true);
        if reply.status.is_success() && accepted {
            let message_id = answer
                .as_ref()
                .and_then(|b| b["result"]["message_id"].as_i64())
                .map(|id| id.to_string());
            return Ok(Receipt { message_id });
        }
        if reply.status.is_success() {
            return Err(ProviderError::Retryable(format!(
                "unexpected answer: {}",
                reply.excerpt()
            )));
        }
        // 403 is "the bot was blocked by the user" or "the user is deactivated": final.
        Err(http::refusal(reply.status, telegram_reason(&reply))).map_err(|e| {
            match (reply.status, e) {
                (StatusCode::FORBIDDEN, ProviderError::Retryable(r)) => ProviderError::Permanent(r),
                (_, e) => e,
            }
        })
    }
}
