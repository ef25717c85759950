//! The Telegram bot: how updates arrive, its webhook secret, and the codes it hands out.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, Redacted, secret_value};

#[derive(Debug, Clone, Args)]
pub struct BotSettings {
    /// How Telegram updates reach the bot: webhook (POST /telegram/webhook), polling (getUpdates, for hosts without public HTTPS) or off.
    #[arg(
        long,
        env = "TELEGRAM_UPDATES",
        value_name = "TELEGRAM_UPDATES",
        default_value = "webhook"
    )]
    pub telegram_updates: UpdatesMode,

    /// Secret token Telegram sends with each webhook call (X-Telegram-Bot-Api-Secret-Token); 1-256 of A-Z a-z 0-9 _ -.
    #[arg(
        long,
        env = "TELEGRAM_WEBHOOK_SECRET",
        value_name = "TELEGRAM_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub telegram_webhook_secret: Option<Redacted>,

    /// File holding TELEGRAM_WEBHOOK_SECRET.
    #[arg(
        long,
        env = "TELEGRAM_WEBHOOK_SECRET_FILE",
        value_name = "TELEGRAM_WEBHOOK_SECRET_FILE"
    )]
    pub telegram_webhook_secret_file: Option<PathBuf>,

    /// Digits in a code the bot hands out; unique among live ones.
    #[arg(long, env = "OTP_TELEGRAM_CODE_LENGTH", value_name = "OTP_TELEGRAM_CODE_LENGTH", default_value_t = 8, value_parser = clap::value_parser!(u8).range(6..=10))]
    pub telegram_code_length: u8,

    /// Seconds a code the bot hands out stays valid.
    #[arg(long, env = "OTP_TELEGRAM_LIFETIME", value_name = "OTP_TELEGRAM_LIFETIME", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub telegram_lifetime: u64,

    /// The bot's reply: {password} is the code, {lifetime} how long it lasts ("5 minutes").
    #[arg(
        long,
        env = "OTP_TELEGRAM_WEBHOOK_TEMPLATE",
        value_name = "OTP_TELEGRAM_WEBHOOK_TEMPLATE",
        default_value = "Your code is {password}. It is valid for {lifetime}."
    )]
    pub telegram_template: String,

    /// Wrong codes one ip may send to /target in 10 minutes before it gets ip_limit.
    #[arg(long, env = "OTP_TARGET_FAILURES", value_name = "OTP_TARGET_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub target_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatesMode {
    Webhook,
    Polling,
    Off,
}

impl FromStr for UpdatesMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "webhook" => Ok(UpdatesMode::Webhook),
            "polling" => Ok(UpdatesMode::Polling),
            "off" => Ok(UpdatesMode::Off),
            other => Err(format!("{other:?} is not one of webhook, polling, off")),
        }
    }
}

impl BotSettings {
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.telegram_lifetime)
    }

    /// The webhook secret, checked against what Telegram accepts as `secret_token`.
    pub fn webhook_secret(&self) -> Result<Option<Redacted>, ConfigError> {
        let secret = secret_value(
            &self.telegram_webhook_secret,
            &self.telegram_webhook_secret_file,
            "TELEGRAM_WEBHOOK_SECRET",
            "TELEGRAM_WEBHOOK_SECRET_FILE",
        )?;
        if let Some(s) = &secret {
            let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if s.0.len() > 256 || !s.0.chars().all(allowed) {
                return Err(ConfigError::new(
                    "TELEGRAM_WEBHOOK_SECRET",
                    "must be 1 to 256 characters of A-Z, a-z, 0-9, _ and -",
                ));
            }
        }
        Ok(secret)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.webhook_secret()?;
        let template = &self.telegram_template;
        if !template.contains("{password}") {
            return Err(ConfigError::new(
                "OTP_TELEGRAM_WEBHOOK_TEMPLATE",
                "must contain {password}",
            ));
        }
        if template.chars().count() > 1_000 {
            return Err(ConfigError::new(
                "OTP_TELEGRAM_WEBHOOK_TEMPLATE",
                "must be at most 1000 characters",
            ));
        }
        Ok(())
    }
}
