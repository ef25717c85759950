//! perfumer: the companion services of the original image (SMS, call, e-mail and
//! Telegram gateways), spoken to exactly as the original did, so existing deployments
//! can switch to otpd without touching them.

use async_trait::async_trait;
use reqwest::Client;
use serde_json::json;

use super::http;
use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, ProviderSettings, Redacted};
use crate::domain::Channel;
use crate::domain::message::MessageContent;

/// The perfumer gateway of one channel.
pub struct PerfumerProvider {
    client: Client,
    endpoint: String,
    /// The Telegram notifier's `X-Auth-Token`.
    token: Option<Redacted>,
}

impl PerfumerProvider {
    pub fn from_settings(
        settings: &ProviderSettings,
        client: Client,
        channel: Channel,
    ) -> Result<Self, ConfigError> {
        let url = settings.perfumer_url(channel)?;
        let path = match channel {
            Channel::Sms => "/sms",
            Channel::Call => "/call",
            Channel::Email => "/smtp",
            Channel::Telegram => "/msg",
        };
        let token = match channel {
            Channel::Telegram => Some(settings.perfumer_telegram_token()?.ok_or_else(|| {
                ConfigError::new(
                    "OTP_TELEGRAM_APP_TOKEN",
                    "must be set to use perfumer for telegram",
                )
            })?),
            _ => None,
        };
        Ok(PerfumerProvider {
            client,
            endpoint: url.join(path),
            token,
        })
    }
}

fn body(job: &DeliveryJob) -> Result<serde_json::Value, ProviderError> {
    Ok(match (&job.content, job.channel) {
        (MessageContent::Text { text }, Channel::Sms | Channel::Call) => {
            json!({ "phones": job.target, "message": text, "force": true })
        }
        (MessageContent::Text { text }, Channel::Telegram) => {
            let chat_id: i64 = job.target.parse().map_err(|_| {
                ProviderError::Permanent(format!("{:?} is not a Telegram chat id", job.target))
            })?;
            json!({ "to": chat_id, "message": text })
        }
        (
            MessageContent::Email {
                subject,
                text,
                html,
            },
            Channel::Email,
        ) => {
            let mut body = json!({ "to": job.target, "subject": subject, "text": text });
            if let Some(html) = html {
                body["html"] = json!(html);
            }
            body
        }
        (_, channel) => {
            return Err(ProviderError::Permanent(format!(
                "a {channel} job has a message of the wrong kind"
            )));
        }
    })
}

#[async_trait]
impl Provider for PerfumerProvider {
    fn name(&self) -> &'static str {
        "perfumer"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let mut request = self.client.post(&self.endpoint).json(&body(job)?);
        if let Some(token) = &self.token {
            request = request.header("X-Auth-Token", &token.0);
        }
        let reply = http::send(request).await?;
        if reply.status.is_success() {
            Ok(Receipt::default())
        } else {
            Err(http::refusal(reply.status, reply.excerpt()))
        }
    }
}
