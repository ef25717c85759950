//! webhook: any HTTP gateway. Each job is POSTed as JSON; any 2xx answer means sent.

use async_trait::async_trait;
use reqwest::Client;
use serde_json::json;

use super::http;
use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, ProviderSettings, Redacted};
use crate::domain::Channel;
use crate::domain::message::MessageContent;

pub struct WebhookProvider {
    client: Client,
    url: String,
    headers: Vec<(String, Redacted)>,
}

impl WebhookProvider {
    pub fn from_settings(
        settings: &ProviderSettings,
        client: Client,
        channel: Channel,
    ) -> Result<Self, ConfigError> {
        let target = settings.webhooks.target(channel)?;
        Ok(WebhookProvider {
            client,
            url: target.url.as_str().to_owned(),
            headers: target.headers,
        })
    }
}

/// `{"channel", "target", "message", "subject"?, "html"?, "id"}`; for e-mail, `message`
/// is the plain-text body.
fn body(job: &DeliveryJob) -> serde_json::Value {
    let mut body = json!({
        "channel": job.channel.as_str(),
        "target": job.target,
        "id": job.id.to_string(),
    });
    match &job.content {
        MessageContent::Text { text } => body["message"] = json!(text),
        MessageContent::Email {
            subject,
            text,
            html,
        } => {
            body["message"] = json!(text);
            body["subject"] = json!(subject);
            if let Some(html) = html {
                body["html"] = json!(html);
            }
        }
    }
    body
}

#[async_trait]
impl Provider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let mut request = self.client.post(&self.url).json(&body(job));
        for (name, value) in &self.headers {
            request = request.header(name, &value.0);
        }
        let reply = http::send(request).await?;
        if reply.status.is_success() {
            Ok(Receipt::default())
        } else {
            Err(http::refusal(reply.status, reply.excerpt()))
        }
    }
}
