//! E-mail through an SMTP server, over one pooled transport built at start.

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use percent_encoding::percent_decode_str;

use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::config::{ConfigError, ProviderSettings, required};
use crate::domain::message::MessageContent;

pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// How the connection is protected, from the URL's scheme and `tls=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// smtps://: TLS from the first byte.
    Implicit,
    /// smtp:// (default): STARTTLS, and refuse to go on without it.
    StartTls,
    /// smtp://...?tls=opportunistic: STARTTLS when offered.
    Opportunistic,
    /// smtp://...?tls=none: plain text, for a relay on the same host or network.
    None,
}

/// The parts of `SMTP_URL`. `Debug` is not derived: it holds the password.
struct SmtpUrl {
    host: String,
    port: u16,
    security: Security,
    user: Option<String>,
    password: Option<String>,
}

/// Parses `SMTP_URL`. Errors never repeat the URL: it may hold a password.
fn parse_url(raw: &str) -> Result<SmtpUrl, String> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| format!("not a URL ({e}); expected e.g. smtp://user:pass@host:587"))?;
    let mut security = match url.scheme() {
        "smtp" => Security::StartTls,
        "smtps" => Security::Implicit,
        other => return Err(format!("the scheme must be smtp or smtps, not {other:?}")),
    };
    for (key, value) in url.query_pairs() {
        security = match (key.as_ref(), value.as_ref(), security) {
            ("tls", "required", Security::StartTls) => Security::StartTls,
            ("tls", "opportunistic", Security::StartTls) => Security::Opportunistic,
            ("tls", "none", Security::StartTls) => Security::None,
            ("tls", _, Security::Implicit) => {
                return Err("smtps:// is always TLS; tls= applies to smtp:// only".into());
            }
            ("tls", other, _) => {
                return Err(format!(
                    "tls={other:?} is not one of required, opportunistic, none"
                ));
            }
            (other, _, _) => return Err(format!("unknown parameter {other:?}")),
        };
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL needs a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(match security {
        Security::Implicit => 465,
        Security::None => 25,
        Security::StartTls | Security::Opportunistic => 587,
    });
    let decode = |s: &str| -> Result<String, String> {
        percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| "the user name and password must be UTF-8".to_owned())
    };
    let user = Some(decode(url.username())?).filter(|u| !u.is_empty());
    let password = url.password().map(decode).transpose()?;
    Ok(SmtpUrl {
        host,
        port,
        security,
        user,
        password,
    })
}

impl SmtpProvider {
    pub fn from_settings(settings: &ProviderSettings) -> Result<Self, ConfigError> {
        let raw = settings
            .smtp_url()?
            .ok_or_else(|| ConfigError::new("SMTP_URL", "must be set to use smtp"))?;
        let url = parse_url(&raw.0).map_err(|reason| ConfigError::new("SMTP_URL", reason))?;
        let from = required(&settings.smtp_from, "SMTP_FROM", "smtp")?;
        let from: Mailbox = from.parse().map_err(|_| {
            ConfigError::new(
                "SMTP_FROM",
                "must be an address such as no-reply@example.com or \"Example <no-reply@example.com>\"",
            )
        })?;
        let tls = |wrap: fn(TlsParameters) -> Tls| -> Result<Tls, ConfigError> {
            TlsParameters::new(url.host.clone())
                .map(wrap)
                .map_err(|e| ConfigError::new("SMTP_URL", format!("cannot set up TLS: {e}")))
        };
        let tls = match url.security {
            Security::Implicit => tls(Tls::Wrapper)?,
            Security::StartTls => tls(Tls::Required)?,
            Security::Opportunistic => tls(Tls::Opportunistic)?,
            Security::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host)
            .port(url.port)
            .tls(tls)
            .timeout(Some(settings.timeout()));
        let password = settings.smtp_password()?.map(|p| p.0).or(url.password);
        match (url.user, password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(user, password));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "SMTP_PASSWORD",
                    "SMTP_URL names a user but no password is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "SMTP_URL",
                    "a password is set but the URL names no user",
                ));
            }
            (None, None) => {}
        }
        Ok(SmtpProvider {
            transport: builder.build(),
            from,
        })
    }

    fn message(&self, job: &DeliveryJob) -> Result<(Message, String), ProviderError> {
        let MessageContent::Email {
            subject,
            text,
            html,
        } = &job.content
        else {
            return Err(ProviderError::Permanent("smtp sends only e-mail".into()));
        };
        let to: Mailbox = job.target.parse().map_err(|_| {
            ProviderError::Permanent(format!("{:?} is not a deliverable address", job.target))
        })?;
        // Derived from the job, so a resend after a crash carries the same id and the
        // receiving side can tell it is the same message.
        let message_id = format!("<{}@{}>", job.id, self.from.email.domain());
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()));
        let built = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                text.clone(),
                html.clone(),
            )),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text.clone()),
            ),
        };
        let message =
            built.map_err(|e| ProviderError::Permanent(format!("cannot build the e-mail: {e}")))?;
        Ok((message, message_id))
    }
}

/// A 5xx refuses this message or recipient for good, except the ones about us rather
/// than the message (530, 534, 535, 538: authentication), which the next provider, or
/// fixed credentials, can get past.
fn refuses_the_message(e: &lettre::transport::smtp::Error) -> bool {
    let about_our_credentials = e
        .status()
        .is_some_and(|code| matches!(code.to_string().as_str(), "530" | "534" | "535" | "538"));
    e.is_permanent() && !about_our_credentials
}

#[async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let (message, message_id) = self.message(job)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(Receipt {
                message_id: Some(message_id),
            }),
            Err(e) if refuses_the_message(&e) => Err(ProviderError::Permanent(e.to_string())),
            Err(e) => Err(ProviderError::Retryable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_tls_ports_and_credentials() {
        let u = parse_url("smtp://me%40x.org:p%3Ass@mail.example.com").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.security),
            ("mail.example.com", 587, Security::StartTls)
        );
        assert_eq!(u.user.as_deref(), Some("me@x.org"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        let u = parse_url("smtps://mail.example.com").unwrap();
        assert_eq!((u.port, u.security), (465, Security::Implicit));
        assert!(u.user.is_none());
        let u = parse_url("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((u.port, u.security), (2525, Security::None));
        let u = parse_url("smtp://relay?tls=opportunistic").unwrap();
        assert_eq!(u.security, Security::Opportunistic);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        for bad in [
            "http://u:hunter2@h",
            "smtps://u:hunter2@h?tls=none",
            "smtp://u:hunter2@h?tls=maybe",
            "smtp://u:hunter2@h?pool=1",
            "hunter2",
        ] {
            let err = parse_url(bad).err().unwrap();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
