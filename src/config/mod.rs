//! Every setting, read once at start from the environment (or the matching flag), typed
//! and checked, so a bad value stops the process with one line naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod abuse;
mod providers;
mod telegram;

pub use abuse::AbuseConfig;
pub use providers::{HttpUrl, ProviderSettings, WebhookTarget, required, secret_value};
pub use telegram::{BotSettings, UpdatesMode};

use crate::domain::Channel;
use crate::domain::secret::MIN_SECRET_BYTES;

#[derive(Debug, Parser)]
#[command(
    name = "otpd",
    version,
    about = "One-time-password service: send a code by SMS, call, e-mail or Telegram, then check it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Ask the running service at OTP_LISTEN for GET /health; exit 0 when it answers (for container health checks).
    Health,
    /// Set up the Telegram bot (uses TELEGRAM_BOT_TOKEN and TELEGRAM_API_URL).
    Telegram {
        #[command(subcommand)]
        command: TelegramCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Point Telegram at this service's webhook, with TELEGRAM_WEBHOOK_SECRET as the secret token.
    SetWebhook {
        /// The public HTTPS URL of POST /telegram/webhook, e.g. https://otp.example.com/telegram/webhook.
        #[arg(long)]
        url: String,
        /// Drop the updates Telegram has queued for the bot.
        #[arg(long)]
        drop_pending_updates: bool,
    },
    /// Remove the webhook (needed before TELEGRAM_UPDATES=polling).
    DeleteWebhook,
    /// Show the bot (getMe) and its webhook (getWebhookInfo).
    Info,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to serve the API on.
    #[arg(
        long,
        env = "OTP_LISTEN",
        value_name = "OTP_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Where state is kept: sqlite://PATH (one process), or redis://[user:pass@]host:port/db, rediss:// (TLS), redis+cluster://host1:port,host2:port (shared by many replicas).
    #[arg(
        long,
        env = "OTP_STORE",
        value_name = "OTP_STORE",
        default_value = "sqlite://./data/otpd.db",
        hide_env_values = true
    )]
    pub store: StoreUrl,

    /// With Redis: the prefix of every key, so that several deployments can share a server.
    #[arg(
        long,
        env = "OTP_REDIS_PREFIX",
        value_name = "OTP_REDIS_PREFIX",
        default_value = "otpd"
    )]
    pub redis_prefix: String,

    /// Key for hashing codes, at least 32 bytes. Unset with SQLite: generated on first start and kept beside the database (mode 0600). Prefer the variable: flags show in `ps`.
    #[arg(
        long,
        env = "OTP_SECRET",
        value_name = "OTP_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<Redacted>,

    /// File holding OTP_SECRET (instead of the variable).
    #[arg(long, env = "OTP_SECRET_FILE", value_name = "OTP_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Digits in a generated code.
    #[arg(long, env = "OTP_CODE_LENGTH", value_name = "OTP_CODE_LENGTH", default_value_t = 6, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub code_length: u8,

    /// Seconds a code lives when the request gives no "lifetime".
    #[arg(long, env = "OTP_DEFAULT_LIFETIME", value_name = "OTP_DEFAULT_LIFETIME", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub default_lifetime: u64,

    /// Longest "lifetime" a request may ask for, in seconds.
    #[arg(long, env = "OTP_MAX_LIFETIME", value_name = "OTP_MAX_LIFETIME", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub max_lifetime: u64,

    /// Live codes kept per target; older ones are dropped when a new one is sent.
    #[arg(long, env = "OTP_MAX_ACTIVE_CODES", value_name = "OTP_MAX_ACTIVE_CODES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_active_codes: u32,

    /// Wrong guesses after which a target's codes are burned until the next send.
    #[arg(long, env = "OTP_MAX_ATTEMPTS", value_name = "OTP_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Providers for SMS, in failover order (comma-separated).
    #[arg(
        long,
        env = "OTP_SMS_PROVIDERS",
        value_name = "OTP_SMS_PROVIDERS",
        default_value = "console"
    )]
    pub sms_providers: ProviderList,

    /// Providers for robotic calls, in failover order.
    #[arg(
        long,
        env = "OTP_CALL_PROVIDERS",
        value_name = "OTP_CALL_PROVIDERS",
        default_value = "console"
    )]
    pub call_providers: ProviderList,

    /// Providers for e-mail, in failover order.
    #[arg(
        long,
        env = "OTP_EMAIL_PROVIDERS",
        value_name = "OTP_EMAIL_PROVIDERS",
        default_value = "console"
    )]
    pub email_providers: ProviderList,

    /// Providers for Telegram, in failover order.
    #[arg(
        long,
        env = "OTP_TELEGRAM_PROVIDERS",
        value_name = "OTP_TELEGRAM_PROVIDERS",
        default_value = "console"
    )]
    pub telegram_providers: ProviderList,

    /// Send every message to the console provider, whatever the provider lists say (true/false, 1/0, yes/no).
    #[arg(
        long,
        env = "DUMMY",
        value_name = "DUMMY",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dummy: bool,

    /// Basic auth user name; set together with HTTP_AUTH_PASSWORD to require it.
    #[arg(long, env = "HTTP_AUTH_USERNAME", value_name = "HTTP_AUTH_USERNAME")]
    pub http_auth_username: Option<String>,

    /// Basic auth password; set together with HTTP_AUTH_USERNAME. Prefer the variable: flags show in `ps`.
    #[arg(
        long,
        env = "HTTP_AUTH_PASSWORD",
        value_name = "HTTP_AUTH_PASSWORD",
        hide_env_values = true
    )]
    pub http_auth_password: Option<Redacted>,

    /// Delivery jobs of each channel sent at once by this process; 0 turns delivery off here.
    #[arg(long, env = "OTP_DELIVERY_WORKERS", value_name = "OTP_DELIVERY_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub delivery_workers: u16,

    /// Seconds a delivery job stays with a worker before another may take it over.
    #[arg(long, env = "OTP_DELIVERY_LEASE", value_name = "OTP_DELIVERY_LEASE", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub delivery_lease: u64,

    #[command(flatten)]
    pub delivery: ProviderSettings,

    #[command(flatten)]
    pub bot: BotSettings,

    #[command(flatten)]
    pub abuse: AbuseConfig,

    /// PEM certificate chain: with OTP_TLS_KEY, otpd serves HTTPS itself.
    #[arg(long, env = "OTP_TLS_CERT", value_name = "OTP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of OTP_TLS_CERT.
    #[arg(long, env = "OTP_TLS_KEY", value_name = "OTP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Log lines as text (for people) or json (one object per line, for log collectors).
    #[arg(
        long,
        env = "OTP_LOG_FORMAT",
        value_name = "OTP_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Serve GET /metrics also on this address, without Basic auth (e.g. 127.0.0.1:9090 for a local Prometheus).
    #[arg(long, env = "OTP_METRICS_LISTEN", value_name = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds between sweeps that remove expired codes and old jobs.
    #[arg(long, env = "OTP_PURGE_INTERVAL", value_name = "OTP_PURGE_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub purge_interval: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            variable,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// The checks that involve more than one setting, or more than a type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.default_lifetime > self.max_lifetime {
            return Err(ConfigError::new(
                "OTP_DEFAULT_LIFETIME",
                format!("must not exceed OTP_MAX_LIFETIME ({})", self.max_lifetime),
            ));
        }
        if !matches!(self.store, StoreUrl::Sqlite(_))
            && self.secret.is_none()
            && self.secret_file.is_none()
        {
            return Err(ConfigError::new(
                "OTP_SECRET",
                "must be set with a Redis store: every replica must hash codes with the same key",
            ));
        }
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(ConfigError::new(
                "OTP_REDIS_PREFIX",
                "must be letters, digits, '-', '_', '.' or ':'",
            ));
        }
        if let Some(secret) = &self.secret {
            if self.secret_file.is_some() {
                return Err(ConfigError::new(
                    "OTP_SECRET_FILE",
                    "set OTP_SECRET or OTP_SECRET_FILE, not both",
                ));
            }
            if secret.0.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    "OTP_SECRET",
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
        }
        for channel in Channel::ALL {
            let names = self.providers(channel);
            if let Some(twice) = names
                .iter()
                .enumerate()
                .find_map(|(i, n)| names[..i].contains(n).then_some(n))
            {
                return Err(ConfigError::new(
                    providers_variable(channel),
                    format!("names {} twice", twice.as_str()),
                ));
            }
            // A lease shorter than a whole failover round would let a second worker take
            // a job whose first send is still under way, and send the code twice.
            let round = self
                .delivery
                .timeout()
                .saturating_mul(names.len() as u32 + 1);
            if self.delivery_workers > 0 && self.delivery_lease() <= round {
                return Err(ConfigError::new(
                    "OTP_DELIVERY_LEASE",
                    format!(
                        "must exceed OTP_PROVIDER_TIMEOUT times one more than the providers of {} ({} s)",
                        providers_variable(channel),
                        round.as_secs()
                    ),
                ));
            }
        }
        self.bot.validate()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "OTP_TLS_KEY",
                    "must be set with OTP_TLS_CERT",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "OTP_TLS_CERT",
                    "must be set with OTP_TLS_KEY",
                ));
            }
            _ => {}
        }
        match (self.auth_username(), self.auth_password()) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "HTTP_AUTH_PASSWORD",
                    "must be set when HTTP_AUTH_USERNAME is",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "HTTP_AUTH_USERNAME",
                    "must be set when HTTP_AUTH_PASSWORD is",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    pub fn providers(&self, channel: Channel) -> &[ProviderName] {
        let list = match channel {
            Channel::Sms => &self.sms_providers,
            Channel::Call => &self.call_providers,
            Channel::Email => &self.email_providers,
            Channel::Telegram => &self.telegram_providers,
        };
        &list.0
    }

    /// The Basic auth credentials, when both are set; an empty value counts as unset,
    /// since empty credentials would lock every client out (or let anyone in).
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.auth_username().zip(self.auth_password())
    }

    fn auth_username(&self) -> Option<&str> {
        self.http_auth_username.as_deref().filter(|u| !u.is_empty())
    }

    fn auth_password(&self) -> Option<&str> {
        self.http_auth_password
            .as_ref()
            .map(|p| p.0.as_str())
            .filter(|p| !p.is_empty())
    }

    /// The certificate and key files, when HTTPS is on.
    pub fn tls_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }

    pub fn delivery_lease(&self) -> Duration {
        Duration::from_secs(self.delivery_lease)
    }

    pub fn purge_interval(&self) -> Duration {
        Duration::from_secs(self.purge_interval)
    }
}

/// A setting that is a secret: `Debug` never shows it.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Redacted(s.to_owned()))
    }
}

/// `OTP_STORE`. A Redis URL may hold a password: `Debug` leaves it out.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// `redis://` or `rediss://` (TLS), one server.
    Redis(String),
    /// `redis+cluster://host1:port,host2:port` (or `rediss+cluster://`): the seed nodes,
    /// each as a `redis://` or `rediss://` URL.
    RedisCluster(Vec<String>),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Redis(_) => f.write_str("redis://***"),
            StoreUrl::RedisCluster(nodes) => {
                write!(f, "redis+cluster://*** ({} nodes)", nodes.len())
            }
        }
    }
}

impl StoreUrl {
    /// What the start-up log may show: the kind of store and where, without credentials.
    pub fn describe(&self) -> String {
        let host = |url: &str| {
            url::Url::parse(url)
                .ok()
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379))))
                .unwrap_or_else(|| "?".into())
        };
        match self {
            StoreUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreUrl::Redis(url) => format!("redis {}", host(url)),
            StoreUrl::RedisCluster(nodes) => format!(
                "redis cluster {}",
                nodes.iter().map(|n| host(n)).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = String;
    /// Errors never repeat the URL: it may hold a password.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.split_once("://") {
            Some(("sqlite", path)) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path))),
            Some(("sqlite", _)) => {
                Err("sqlite:// needs a file path, e.g. sqlite://./data/otpd.db".into())
            }
            Some(("redis" | "rediss", _)) => {
                let url =
                    url::Url::parse(s).map_err(|e| format!("is not a valid Redis URL ({e})"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err("a Redis URL needs a host, e.g. redis://127.0.0.1:6379/0".into());
                }
                Ok(StoreUrl::Redis(s.to_owned()))
            }
            Some((scheme @ ("redis+cluster" | "rediss+cluster"), rest)) => {
                let base = scheme.trim_end_matches("+cluster");
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let nodes: Vec<String> = hosts
                    .trim_end_matches('/')
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{base}://{auth}{h}"))
                    .collect();
                if nodes.is_empty() {
                    return Err("redis+cluster:// needs host:port[,host:port...]".into());
                }
                for node in &nodes {
                    url::Url::parse(node).map_err(|e| format!("has an invalid node ({e})"))?;
                }
                Ok(StoreUrl::RedisCluster(nodes))
            }
            Some((scheme, _)) => Err(format!(
                "the {scheme}:// store is not known; use sqlite://PATH, redis://, rediss:// or redis+cluster://"
            )),
            None => {
                Err("must be a URL like sqlite://./data/otpd.db or redis://127.0.0.1:6379".into())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not one of text, json")),
        }
    }
}

/// The variable that lists `channel`'s providers.
pub fn providers_variable(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "OTP_SMS_PROVIDERS",
        Channel::Call => "OTP_CALL_PROVIDERS",
        Channel::Email => "OTP_EMAIL_PROVIDERS",
        Channel::Telegram => "OTP_TELEGRAM_PROVIDERS",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderName {
    Console,
    Twilio,
    Smtp,
    Telegram,
    Perfumer,
    Webhook,
}

impl ProviderName {
    const ALL: [ProviderName; 6] = [
        ProviderName::Console,
        ProviderName::Twilio,
        ProviderName::Smtp,
        ProviderName::Telegram,
        ProviderName::Perfumer,
        ProviderName::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Console => "console",
            ProviderName::Twilio => "twilio",
            ProviderName::Smtp => "smtp",
            ProviderName::Telegram => "telegram",
            ProviderName::Perfumer => "perfumer",
            ProviderName::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderList(pub Vec<ProviderName>);

impl FromStr for ProviderList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let names = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                ProviderName::ALL
                    .into_iter()
                    .find(|p| p.as_str() == n)
                    .ok_or_else(|| {
                        format!(
                            "unknown provider {n:?} (available: console, twilio, smtp, telegram, perfumer, webhook)"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err("must name at least one provider".into());
        }
        Ok(ProviderList(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_of_every_kind_and_never_their_passwords() {
        let url = |s: &str| s.parse::<StoreUrl>();
        assert_eq!(
            url("redis://:pw@10.0.0.1:6380/2").unwrap(),
            StoreUrl::Redis("redis://:pw@10.0.0.1:6380/2".into())
        );
        assert_eq!(
            url("rediss+cluster://u:pw@a:7000,b:7001").unwrap(),
            StoreUrl::RedisCluster(vec![
                "rediss://u:pw@a:7000".into(),
                "rediss://u:pw@b:7001".into()
            ])
        );
        let shown = format!(
            "{:?} {}",
            url("redis://:s3cret@h:1").unwrap(),
            url("redis://:s3cret@h:1").unwrap().describe()
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        for bad in ["redis://:s3cret@", "redis+cluster://", "ftp://s3cret"] {
            assert!(!url(bad).unwrap_err().contains("s3cret"), "{bad}");
        }
        let err = parse(&["--store", "redis://h:1"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "OTP_SECRET");
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["otpd"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.config)
    }

    #[test]
    fn defaults_validate() {
        let c = parse(&[]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store, StoreUrl::Sqlite("./data/otpd.db".into()));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = parse(&["--max-attempts", "0"]).unwrap_err().to_string();
        assert!(err.contains("OTP_MAX_ATTEMPTS"), "{err}");
        let err = parse(&["--sms-providers", "carrier-pigeon"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OTP_SMS_PROVIDERS") && err.contains("carrier-pigeon"),
            "{err}"
        );
        let err = parse(&["--store", "mongodb://x"]).unwrap_err().to_string();
        assert!(err.contains("OTP_STORE"), "{err}");
    }

    #[test]
    fn empty_auth_values_count_as_unset_and_secrets_are_not_debug_printed() {
        let c = parse(&["--http-auth-username", "", "--http-auth-password", ""]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.basic_auth(), None);
        let err = parse(&["--http-auth-username", "admin", "--http-auth-password", ""])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "HTTP_AUTH_PASSWORD");
        let c = parse(&[
            "--secret",
            "0123456789abcdef0123456789abcdef-x",
            "--http-auth-username",
            "a",
            "--http-auth-password",
            "hunter2-pass",
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn dummy_takes_the_usual_spellings_of_true() {
        for v in ["true", "1", "yes", "on"] {
            assert!(parse(&["--dummy", v]).unwrap().dummy, "{v}");
        }
        assert!(!parse(&[]).unwrap().dummy);
        let err = parse(&["--dummy", "maybe"]).unwrap_err().to_string();
        assert!(err.contains("DUMMY"), "{err}");
    }

    #[test]
    fn auth_needs_both_halves_and_secret_needs_length() {
        let err = parse(&["--http-auth-username", "admin"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "HTTP_AUTH_PASSWORD");
        let err = parse(&["--secret", "short"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "OTP_SECRET");
        let err = parse(&["--default-lifetime", "100", "--max-lifetime", "50"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.variable, "OTP_DEFAULT_LIFETIME");
    }
}
