//! What each delivery provider needs: endpoints, credentials and sender identities.
//! Every credential can also come from a file (`NAME_FILE`), for container secrets.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, Redacted};
use crate::domain::Channel;

#[derive(Debug, Clone, Args)]
pub struct ProviderSettings {
    /// Seconds one provider call may take before it counts as failed and the next provider is tried.
    #[arg(long, env = "OTP_PROVIDER_TIMEOUT", value_name = "OTP_PROVIDER_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub provider_timeout: u64,

    /// Twilio account SID (AC...), for the twilio provider.
    #[arg(long, env = "TWILIO_ACCOUNT_SID", value_name = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token. Prefer the variable or TWILIO_AUTH_TOKEN_FILE: flags show in `ps`.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        value_name = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub twilio_auth_token: Option<Redacted>,

    /// File holding TWILIO_AUTH_TOKEN.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN_FILE",
        value_name = "TWILIO_AUTH_TOKEN_FILE"
    )]
    pub twilio_auth_token_file: Option<PathBuf>,

    /// Twilio number messages and calls come from (E.164, e.g. +15005550006).
    #[arg(long, env = "TWILIO_FROM", value_name = "TWILIO_FROM")]
    pub twilio_from: Option<String>,

    /// Twilio Messaging Service SID (MG...); used for SMS instead of TWILIO_FROM when set.
    #[arg(
        long,
        env = "TWILIO_MESSAGING_SERVICE_SID",
        value_name = "TWILIO_MESSAGING_SERVICE_SID"
    )]
    pub twilio_messaging_service_sid: Option<String>,

    /// Base URL of the Twilio REST API.
    #[arg(
        long,
        env = "TWILIO_API_URL",
        value_name = "TWILIO_API_URL",
        default_value = "https://api.twilio.com",
        hide_env_values = true
    )]
    pub twilio_api_url: Redacted,

    /// Language of the voice reading codes in calls (Twilio <Say language>).
    #[arg(
        long,
        env = "OTP_CALL_LANGUAGE",
        value_name = "OTP_CALL_LANGUAGE",
        default_value = "en-US"
    )]
    pub call_language: String,

    /// Mail server: smtp://user:pass@host:587 (STARTTLS), smtps://user:pass@host:465 (TLS), smtp://host:25?tls=none (local relay).
    #[arg(
        long,
        env = "SMTP_URL",
        value_name = "SMTP_URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<Redacted>,

    /// File holding SMTP_URL.
    #[arg(long, env = "SMTP_URL_FILE", value_name = "SMTP_URL_FILE")]
    pub smtp_url_file: Option<PathBuf>,

    /// SMTP password, overriding the one in SMTP_URL (so the URL need not be secret).
    #[arg(
        long,
        env = "SMTP_PASSWORD",
        value_name = "SMTP_PASSWORD",
        hide_env_values = true
    )]
    pub smtp_password: Option<Redacted>,

    /// File holding SMTP_PASSWORD.
    #[arg(long, env = "SMTP_PASSWORD_FILE", value_name = "SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,

    /// Sender of e-mails, e.g. "Example <no-reply@example.com>".
    #[arg(long, env = "SMTP_FROM", value_name = "SMTP_FROM")]
    pub smtp_from: Option<String>,

    /// Telegram bot token, for the telegram provider.
    #[arg(
        long,
        env = "TELEGRAM_BOT_TOKEN",
        value_name = "TELEGRAM_BOT_TOKEN",
        hide_env_values = true
    )]
    pub telegram_bot_token: Option<Redacted>,

    /// File holding TELEGRAM_BOT_TOKEN.
    #[arg(
        long,
        env = "TELEGRAM_BOT_TOKEN_FILE",
        value_name = "TELEGRAM_BOT_TOKEN_FILE"
    )]
    pub telegram_bot_token_file: Option<PathBuf>,

    /// Base URL of the Telegram Bot API.
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        value_name = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org",
        hide_env_values = true
    )]
    pub telegram_api_url: Redacted,

    /// perfumer: the SMS service (receives POST /sms).
    #[arg(
        long,
        env = "OTP_SMS_URL",
        value_name = "OTP_SMS_URL",
        hide_env_values = true
    )]
    pub perfumer_sms_url: Option<Redacted>,

    /// perfumer: the call service (receives POST /call).
    #[arg(
        long,
        env = "OTP_CALL_URL",
        value_name = "OTP_CALL_URL",
        hide_env_values = true
    )]
    pub perfumer_call_url: Option<Redacted>,

    /// perfumer: the e-mail service (receives POST /smtp).
    #[arg(
        long,
        env = "OTP_EMAIL_URL",
        value_name = "OTP_EMAIL_URL",
        hide_env_values = true
    )]
    pub perfumer_email_url: Option<Redacted>,

    /// perfumer: the Telegram notifier (receives POST /msg).
    #[arg(
        long,
        env = "OTP_TELEGRAM_URL",
        value_name = "OTP_TELEGRAM_URL",
        hide_env_values = true
    )]
    pub perfumer_telegram_url: Option<Redacted>,

    /// perfumer: the X-Auth-Token of the Telegram notifier.
    #[arg(
        long,
        env = "OTP_TELEGRAM_APP_TOKEN",
        value_name = "OTP_TELEGRAM_APP_TOKEN",
        hide_env_values = true
    )]
    pub perfumer_telegram_token: Option<Redacted>,

    /// File holding OTP_TELEGRAM_APP_TOKEN.
    #[arg(
        long,
        env = "OTP_TELEGRAM_APP_TOKEN_FILE",
        value_name = "OTP_TELEGRAM_APP_TOKEN_FILE"
    )]
    pub perfumer_telegram_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub webhooks: WebhookSettings,
}

/// `webhook`: one URL (and optional headers) per channel.
#[derive(Debug, Clone, Args)]
pub struct WebhookSettings {
    /// webhook: where SMS jobs are POSTed as JSON.
    #[arg(
        long,
        env = "OTP_SMS_WEBHOOK_URL",
        value_name = "OTP_SMS_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub sms_webhook_url: Option<Redacted>,
    /// webhook: extra headers for SMS, a JSON object such as {"Authorization": "Bearer ..."}.
    #[arg(
        long,
        env = "OTP_SMS_WEBHOOK_HEADERS",
        value_name = "OTP_SMS_WEBHOOK_HEADERS",
        hide_env_values = true
    )]
    pub sms_webhook_headers: Option<Redacted>,
    /// File holding OTP_SMS_WEBHOOK_HEADERS.
    #[arg(
        long,
        env = "OTP_SMS_WEBHOOK_HEADERS_FILE",
        value_name = "OTP_SMS_WEBHOOK_HEADERS_FILE"
    )]
    pub sms_webhook_headers_file: Option<PathBuf>,

    /// webhook: where call jobs are POSTed as JSON.
    #[arg(
        long,
        env = "OTP_CALL_WEBHOOK_URL",
        value_name = "OTP_CALL_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub call_webhook_url: Option<Redacted>,
    /// webhook: extra headers for calls (JSON object).
    #[arg(
        long,
        env = "OTP_CALL_WEBHOOK_HEADERS",
        value_name = "OTP_CALL_WEBHOOK_HEADERS",
        hide_env_values = true
    )]
    pub call_webhook_headers: Option<Redacted>,
    /// File holding OTP_CALL_WEBHOOK_HEADERS.
    #[arg(
        long,
        env = "OTP_CALL_WEBHOOK_HEADERS_FILE",
        value_name = "OTP_CALL_WEBHOOK_HEADERS_FILE"
    )]
    pub call_webhook_headers_file: Option<PathBuf>,

    /// webhook: where e-mail jobs are POSTed as JSON.
    #[arg(
        long,
        env = "OTP_EMAIL_WEBHOOK_URL",
        value_name = "OTP_EMAIL_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub email_webhook_url: Option<Redacted>,
    /// webhook: extra headers for e-mail (JSON object).
    #[arg(
        long,
        env = "OTP_EMAIL_WEBHOOK_HEADERS",
        value_name = "OTP_EMAIL_WEBHOOK_HEADERS",
        hide_env_values = true
    )]
    pub email_webhook_headers: Option<Redacted>,
    /// File holding OTP_EMAIL_WEBHOOK_HEADERS.
    #[arg(
        long,
        env = "OTP_EMAIL_WEBHOOK_HEADERS_FILE",
        value_name = "OTP_EMAIL_WEBHOOK_HEADERS_FILE"
    )]
    pub email_webhook_headers_file: Option<PathBuf>,

    /// webhook: where Telegram jobs are POSTed as JSON.
    #[arg(
        long,
        env = "OTP_TELEGRAM_WEBHOOK_URL",
        value_name = "OTP_TELEGRAM_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub telegram_webhook_url: Option<Redacted>,
    /// webhook: extra headers for Telegram (JSON object).
    #[arg(
        long,
        env = "OTP_TELEGRAM_WEBHOOK_HEADERS",
        value_name = "OTP_TELEGRAM_WEBHOOK_HEADERS",
        hide_env_values = true
    )]
    pub telegram_webhook_headers: Option<Redacted>,
    /// File holding OTP_TELEGRAM_WEBHOOK_HEADERS.
    #[arg(
        long,
        env = "OTP_TELEGRAM_WEBHOOK_HEADERS_FILE",
        value_name = "OTP_TELEGRAM_WEBHOOK_HEADERS_FILE"
    )]
    pub telegram_webhook_headers_file: Option<PathBuf>,
}

/// A setting that must be present because a listed provider needs it.
pub fn required<'a, T>(
    value: &'a Option<T>,
    variable: &'static str,
    provider: &str,
) -> Result<&'a T, ConfigError> {
    value
        .as_ref()
        .ok_or_else(|| ConfigError::new(variable, format!("must be set to use {provider}")))
}

/// A secret given directly or as `NAME_FILE` (one trailing line break is dropped, as
/// secret files usually end with one). Giving both is refused: which one wins would be
/// a guess.
pub fn secret_value(
    value: &Option<Redacted>,
    file: &Option<PathBuf>,
    variable: &'static str,
    file_variable: &'static str,
) -> Result<Option<Redacted>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            file_variable,
            format!("set {variable} or {file_variable}, not both"),
        )),
        (Some(v), None) => Ok(Some(v.clone()).filter(|v| !v.0.is_empty())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    file_variable,
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            Ok(Some(Redacted(text.to_owned())).filter(|v| !v.0.is_empty()))
        }
        (None, None) => Ok(None),
    }
}

impl ProviderSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.provider_timeout)
    }

    pub fn twilio_auth_token(&self) -> Result<Option<Redacted>, ConfigError> {
        secret_value(
            &self.twilio_auth_token,
            &self.twilio_auth_token_file,
            "TWILIO_AUTH_TOKEN",
            "TWILIO_AUTH_TOKEN_FILE",
        )
    }

    pub fn smtp_url(&self) -> Result<Option<Redacted>, ConfigError> {
        secret_value(
            &self.smtp_url,
            &self.smtp_url_file,
            "SMTP_URL",
            "SMTP_URL_FILE",
        )
    }

    pub fn smtp_password(&self) -> Result<Option<Redacted>, ConfigError> {
        secret_value(
            &self.smtp_password,
            &self.smtp_password_file,
            "SMTP_PASSWORD",
            "SMTP_PASSWORD_FILE",
        )
    }

    pub fn telegram_bot_token(&self) -> Result<Option<Redacted>, ConfigError> {
        secret_value(
            &self.telegram_bot_token,
            &self.telegram_bot_token_file,
            "TELEGRAM_BOT_TOKEN",
            "TELEGRAM_BOT_TOKEN_FILE",
        )
    }

    pub fn perfumer_telegram_token(&self) -> Result<Option<Redacted>, ConfigError> {
        secret_value(
            &self.perfumer_telegram_token,
            &self.perfumer_telegram_token_file,
            "OTP_TELEGRAM_APP_TOKEN",
            "OTP_TELEGRAM_APP_TOKEN_FILE",
        )
    }

    /// The perfumer service base URL of `channel`.
    pub fn perfumer_url(&self, channel: Channel) -> Result<HttpUrl, ConfigError> {
        let (url, variable) = match channel {
            Channel::Sms => (&self.perfumer_sms_url, "OTP_SMS_URL"),
            Channel::Call => (&self.perfumer_call_url, "OTP_CALL_URL"),
            Channel::Email => (&self.perfumer_email_url, "OTP_EMAIL_URL"),
            Channel::Telegram => (&self.perfumer_telegram_url, "OTP_TELEGRAM_URL"),
        };
        HttpUrl::base(required(url, variable, "perfumer")?, variable)
    }

    pub fn twilio_api_url(&self) -> Result<HttpUrl, ConfigError> {
        HttpUrl::base(&self.twilio_api_url, "TWILIO_API_URL")
    }

    pub fn telegram_api_url(&self) -> Result<HttpUrl, ConfigError> {
        HttpUrl::base(&self.telegram_api_url, "TELEGRAM_API_URL")
    }
}

/// One channel's webhook: where to post, and the headers to add.
pub struct WebhookTarget {
    pub url: HttpUrl,
    pub headers: Vec<(String, Redacted)>,
}

impl WebhookSettings {
    pub fn target(&self, channel: Channel) -> Result<WebhookTarget, ConfigError> {
        // The variables of each channel's webhook, indexed as `Channel::ALL`.
        const VARIABLES: [[&str; 3]; 4] = [
            [
                "OTP_SMS_WEBHOOK_URL",
                "OTP_SMS_WEBHOOK_HEADERS",
                "OTP_SMS_WEBHOOK_HEADERS_FILE",
            ],
            [
                "OTP_CALL_WEBHOOK_URL",
                "OTP_CALL_WEBHOOK_HEADERS",
                "OTP_CALL_WEBHOOK_HEADERS_FILE",
            ],
            [
                "OTP_EMAIL_WEBHOOK_URL",
                "OTP_EMAIL_WEBHOOK_HEADERS",
                "OTP_EMAIL_WEBHOOK_HEADERS_FILE",
            ],
            [
                "OTP_TELEGRAM_WEBHOOK_URL",
                "OTP_TELEGRAM_WEBHOOK_HEADERS",
                "OTP_TELEGRAM_WEBHOOK_HEADERS_FILE",
            ],
        ];
        let [url_var, headers_var, file_var] = VARIABLES[channel as usize];
        let (url, headers, file) = match channel {
            Channel::Sms => (
                &self.sms_webhook_url,
                &self.sms_webhook_headers,
                &self.sms_webhook_headers_file,
            ),
            Channel::Call => (
                &self.call_webhook_url,
                &self.call_webhook_headers,
                &self.call_webhook_headers_file,
            ),
            Channel::Email => (
                &self.email_webhook_url,
                &self.email_webhook_headers,
                &self.email_webhook_headers_file,
            ),
            Channel::Telegram => (
                &self.telegram_webhook_url,
                &self.telegram_webhook_headers,
                &self.telegram_webhook_headers_file,
            ),
        };
        let url = HttpUrl::endpoint(required(url, url_var, "webhook")?, url_var)?;
        let headers = match secret_value(headers, file, headers_var, file_var)? {
            None => Vec::new(),
            Some(json) => {
                parse_headers(&json.0).map_err(|reason| ConfigError::new(headers_var, reason))?
            }
        };
        Ok(WebhookTarget { url, headers })
    }
}

/// `{"Name": "value", ...}` into checked header pairs. The error never quotes a value:
/// header values are often credentials.
fn parse_headers(json: &str) -> Result<Vec<(String, Redacted)>, String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|_| "must be a JSON object of header names to string values".to_owned())?;
    map.into_iter()
        .map(|(name, value)| {
            let serde_json::Value::String(value) = value else {
                return Err(format!("the value of {name:?} must be a string"));
            };
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{name:?} is not a valid header name"));
            }
            if axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(format!("the value of {name:?} is not a valid header value"));
            }
            Ok((name, Redacted(value)))
        })
        .collect()
}

/// An http:// or https:// URL from a setting. Settings may carry credentials (a user
/// and password, a token in the query), so errors never repeat the value and `Display`
/// shows only scheme, host, port and path.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(url::Url);

impl HttpUrl {
    /// A base that paths are appended to: no query or fragment.
    pub fn base(raw: &Redacted, variable: &'static str) -> Result<Self, ConfigError> {
        let url = Self::endpoint(raw, variable)?;
        if url.0.query().is_some() {
            return Err(ConfigError::new(variable, "must not have a query string"));
        }
        Ok(url)
    }

    /// A URL posted to as it is; a query string is kept.
    pub fn endpoint(raw: &Redacted, variable: &'static str) -> Result<Self, ConfigError> {
        let url = url::Url::parse(raw.0.trim()).map_err(|e| {
            ConfigError::new(
                variable,
                format!("is not a URL ({e}); expected e.g. https://host:port/path"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                variable,
                "must be an http:// or https:// URL with a host",
            ));
        }
        if url.fragment().is_some() {
            return Err(ConfigError::new(variable, "must not have a #fragment"));
        }
        Ok(HttpUrl(url))
    }

    /// The base with `path` appended (`path` starts with '/').
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0.as_str().trim_end_matches('/'))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        f.write_str(shown.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_paths_and_hide_credentials() {
        let setting = |s: &str| Redacted(s.to_owned());
        let u = HttpUrl::base(&setting("http://user:pw@127.0.0.1:9000/base/"), "V").unwrap();
        assert_eq!(u.join("/sms"), "http://user:pw@127.0.0.1:9000/base/sms");
        assert_eq!(u.to_string(), "http://127.0.0.1:9000/base");
        assert!(!format!("{u:?}").contains("pw"));
        let hook = HttpUrl::endpoint(&setting("https://gw/otp?token=s3cret"), "V").unwrap();
        assert_eq!(hook.as_str(), "https://gw/otp?token=s3cret");
        assert_eq!(hook.to_string(), "https://gw/otp");
        for bad in [
            "ftp://s3cret",
            "not a url s3cret",
            "http://x/?a=s3cret",
            "mailto:s3cret@b",
            "http://x/#s3cret",
        ] {
            let err = HttpUrl::base(&setting(bad), "V").unwrap_err();
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn headers_must_be_a_json_object_of_strings_and_errors_do_not_quote_values() {
        let h = parse_headers(r#"{"Authorization": "Bearer s3cret", "X-A": "1"}"#).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "Authorization");
        for bad in [
            r#"["a"]"#,
            r#"{"A": 1}"#,
            r#"{"bad name": "v"}"#,
            r#"{"A": "s3cret\n"}"#,
        ] {
            let err = parse_headers(bad).unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn secrets_come_from_a_variable_or_a_file_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc:def\n").unwrap();
        let from_file = secret_value(&None, &Some(file.clone()), "T", "T_FILE").unwrap();
        assert_eq!(from_file.unwrap().0, "abc:def");
        let both = secret_value(&Some(Redacted("x".into())), &Some(file), "T", "T_FILE");
        assert_eq!(both.unwrap_err().variable, "T_FILE");
        let missing = secret_value(&None, &Some(dir.path().join("nope")), "T", "T_FILE");
        assert_eq!(missing.unwrap_err().variable, "T_FILE");
        assert!(secret_value(&None, &None, "T", "T_FILE").unwrap().is_none());
    }
}
