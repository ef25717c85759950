//! Builds each channel's provider list from the settings, once, at start: a provider
//! that lacks a setting stops the process there, not at the first send.

use std::sync::Arc;

use super::{
    ConsoleOut, ConsoleProvider, PerfumerProvider, Provider, ProviderChains, SmtpProvider,
    TelegramProvider, TwilioProvider, WebhookProvider,
};
use crate::config::{Config, ConfigError, ProviderName, providers_variable};
use crate::domain::Channel;

pub fn build(config: &Config, console: &ConsoleOut) -> Result<ProviderChains, ConfigError> {
    let mut chains = ProviderChains::default();
    let console: Arc<dyn Provider> = Arc::new(ConsoleProvider::new(console.clone()));
    if config.dummy {
        for channel in Channel::ALL {
            chains.set(channel, vec![console.clone()]);
        }
        return Ok(chains);
    }
    let settings = &config.delivery;
    let client = super::http::client(settings.timeout())
        .map_err(|reason| ConfigError::new("OTP_PROVIDER_TIMEOUT", reason))?;
    // Shared by the channels that name them, so each keeps one connection pool.
    let mut twilio: Option<Arc<dyn Provider>> = None;
    let mut smtp: Option<Arc<dyn Provider>> = None;
    let mut telegram: Option<Arc<dyn Provider>> = None;
    let calls_use_twilio = config
        .providers(Channel::Call)
        .contains(&ProviderName::Twilio);
    for channel in Channel::ALL {
        let mut providers = Vec::new();
        for &name in config.providers(channel) {
            let provider: Arc<dyn Provider> = match (name, channel) {
                (ProviderName::Console, _) => console.clone(),
                (ProviderName::Twilio, Channel::Sms | Channel::Call) => {
                    shared(&mut twilio, || {
                        TwilioProvider::from_settings(settings, client.clone(), calls_use_twilio)
                    })?
                }
                (ProviderName::Smtp, Channel::Email) => {
                    shared(&mut smtp, || SmtpProvider::from_settings(settings))?
                }
                (ProviderName::Telegram, Channel::Telegram) => shared(&mut telegram, || {
                    TelegramProvider::from_settings(settings, client.clone())
                })?,
                (ProviderName::Perfumer, _) => Arc::new(PerfumerProvider::from_settings(
                    settings,
                    client.clone(),
                    channel,
                )?),
                (ProviderName::Webhook, _) => Arc::new(WebhookProvider::from_settings(
                    settings,
                    client.clone(),
                    channel,
                )?),
                (name, channel) => {
                    return Err(ConfigError::new(
                        providers_variable(channel),
                        format!("{} cannot send {channel}", name.as_str()),
                    ));
                }
            };
            providers.push(provider);
        }
        chains.set(channel, providers);
    }
    Ok(chains)
}

fn shared<P: Provider + 'static>(
    slot: &mut Option<Arc<dyn Provider>>,
    make: impl FnOnce() -> Result<P, ConfigError>,
) -> Result<Arc<dyn Provider>, ConfigError> {
    if let Some(p) = slot {
        return Ok(p.clone());
    }
    let p: Arc<dyn Provider> = Arc::new(make()?);
    *slot = Some(p.clone());
    Ok(p)
}
