//! Twilio: SMS through the Messages API, robotic calls through the Calls API with
//! inline TwiML that reads the message twice.

use async_trait::async_trait;
use reqwest::Client;

use super::http::{self, Reply};
use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, Redacted, required};
use crate::config::{HttpUrl, ProviderSettings};
use crate::domain::Channel;
use crate::domain::message::MessageContent;

pub struct TwilioProvider {
    client: Client,
    api: HttpUrl,
    account_sid: String,
    auth_token: Redacted,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    language: String,
}

impl TwilioProvider {
    /// `call` says whether calls are among its channels: they need a caller number.
    pub fn from_settings(
        settings: &ProviderSettings,
        client: Client,
        call: bool,
    ) -> Result<Self, ConfigError> {
        let account_sid = required(&settings.twilio_account_sid, "TWILIO_ACCOUNT_SID", "twilio")?;
        let auth_token = settings
            .twilio_auth_token()?
            .ok_or_else(|| ConfigError::new("TWILIO_AUTH_TOKEN", "must be set to use twilio"))?;
        let from = settings.twilio_from.clone().filter(|f| !f.is_empty());
        let service = settings
            .twilio_messaging_service_sid
            .clone()
            .filter(|s| !s.is_empty());
        if from.is_none() && (call || service.is_none()) {
            return Err(ConfigError::new(
                "TWILIO_FROM",
                if call {
                    "must be set to place calls with twilio"
                } else {
                    "must be set (or TWILIO_MESSAGING_SERVICE_SID) to use twilio"
                },
            ));
        }
        if settings.call_language.is_empty()
            || !settings
                .call_language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ConfigError::new(
                "OTP_CALL_LANGUAGE",
                "must be a language tag such as en-US",
            ));
        }
        Ok(TwilioProvider {
            client,
            api: settings.twilio_api_url()?,
            account_sid: account_sid.clone(),
            auth_token,
            from,
            messaging_service_sid: service,
            language: settings.call_language.clone(),
        })
    }

    fn endpoint(&self, resource: &str) -> String {
        self.api.join(&format!(
            "/2010-04-01/Accounts/{}/{resource}.json",
            percent_encoding::utf8_percent_encode(
                &self.account_sid,
                percent_encoding::NON_ALPHANUMERIC
            )
        ))
    }

    /// The message read twice, with a pause between, so a listener who missed a digit
    /// hears it again.
    fn twiml(&self, text: &str) -> String {
        let say = format!(
            "<Say language=\"{}\">{}</Say>",
            self.language,
            xml_escape(text)
        );
        format!("<Response>{say}<Pause length=\"1\"/>{say}</Response>")
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Twilio's error answers carry a numeric code and a sentence; both help the operator.
fn twilio_reason(reply: &Reply) -> String {
    match reply.json() {
        Some(body) => match (body["code"].as_i64(), body["message"].as_str()) {
            (Some(code), Some(message)) => format!("Twilio error {code}: {message}"),
            (None, Some(message)) => message.to_owned(),
            _ => reply.excerpt(),
        },
        None => reply.excerpt(),
    }
}

#[async_trait]
impl Provider for TwilioProvider {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let MessageContent::Text { text } = &job.content else {
            return Err(ProviderError::Permanent(
                "twilio sends only SMS and calls".into(),
            ));
        };
        let to = format!("+{}", job.target);
        let mut form: Vec<(&str, &str)> = vec![("To", &to)];
        let twiml;
        let resource = match job.channel {
            Channel::Sms => {
                match (&self.messaging_service_sid, &self.from) {
                    (Some(service), _) => form.push(("MessagingServiceSid", service)),
                    (None, Some(from)) => form.push(("From", from)),
                    (None, None) => {}
                }
                form.push(("Body", text));
                "Messages"
            }
            Channel::Call => {
                if let Some(from) = &self.from {
                    form.push(("From", from));
                }
                twiml = self.twiml(text);
                form.push(("Twiml", &twiml));
                "Calls"
            }
            other => {
                return Err(ProviderError::Permanent(format!(
                    "twilio cannot send {other}"
                )));
            }
        };
        let request = self
            .client
            .post(self.endpoint(resource))
            .basic_auth(&self.account_sid, Some(&self.auth_token.0))
            .form(&form);
        let reply = http::send(request).await?;
        if !reply.status.is_success() {
            return Err(http::refusal(reply.status, twilio_reason(&reply)));
        }
        let sid = reply
            .json()
            .and_then(|b| b["sid"].as_str().map(str::to_owned));
        Ok(Receipt { message_id: sid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_escaped_and_read_twice() {
        let provider = TwilioProvider {
            client: Client::new(),
            api: HttpUrl::base(&Redacted("https://api.twilio.com".into()), "T").unwrap(),
            account_sid: "AC1".into(),
            auth_token: Redacted("t".into()),
            from: Some("+1500".into()),
            messaging_service_sid: None,
            language: "de-DE".into(),
        };
        assert_eq!(
            provider.twiml("Code <1 2> & more"),
            "<Response><Say language=\"de-DE\">Code &lt;1 2&gt; &amp; more</Say><Pause length=\"1\"/>\
             <Say language=\"de-DE\">Code &lt;1 2&gt; &amp; more</Say></Response>"
        );
    }
}
