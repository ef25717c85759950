//! `otpd telegram set-webhook | delete-webhook | info`: the bot's set-up, done against
//! the Bot API with the same settings the service uses.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, TelegramCommand};
use crate::delivery::BotApi;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What to print on success, or the one line explaining the failure.
pub async fn run(command: &TelegramCommand, config: &Config) -> Result<String, String> {
    let api = BotApi::standalone(&config.delivery, "for the telegram commands")
        .map_err(|e| e.to_string())?;
    match command {
        TelegramCommand::SetWebhook {
            url,
            drop_pending_updates,
        } => {
            let secret = config.bot.webhook_secret().map_err(|e| e.to_string())?;
            let mut body = json!({
                "url": url,
                "allowed_updates": ["message"],
                "drop_pending_updates": drop_pending_updates,
            });
            if let Some(secret) = &secret {
                body["secret_token"] = json!(secret.0);
            }
            api.call("setWebhook", &body, TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(match secret {
                Some(_) => format!("Telegram will send updates to {url}, with the secret token"),
                None => format!(
                    "Telegram will send updates to {url}; set TELEGRAM_WEBHOOK_SECRET so that only Telegram can"
                ),
            })
        }
        TelegramCommand::DeleteWebhook => {
            api.call("deleteWebhook", &json!({}), TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok("webhook removed; updates can be fetched with TELEGRAM_UPDATES=polling".to_owned())
        }
        TelegramCommand::Info => {
            let me = api
                .call("getMe", &json!({}), TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let hook = api
                .call("getWebhookInfo", &json!({}), TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(describe(&me, &hook))
        }
    }
}

fn describe(me: &Value, hook: &Value) -> String {
    let mut lines = vec![format!(
        "bot: @{} (id {})",
        me["username"].as_str().unwrap_or("?"),
        me["id"]
    )];
    match hook["url"].as_str().filter(|u| !u.is_empty()) {
        Some(url) => lines.push(format!("webhook: {url}")),
        None => lines.push("webhook: none (updates can be polled)".to_owned()),
    }
    lines.push(format!(
        "pending updates: {}",
        hook["pending_update_count"].as_u64().unwrap_or(0)
    ));
    if let Some(error) = hook["last_error_message"].as_str() {
        lines.push(format!("last delivery error: {error}"));
    }
    lines.join("\n")
}
