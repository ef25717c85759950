//! `GET /limit/{channel}` and `POST /limit/{channel}`.

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value};

use super::AppState;
use super::error::{self, ApiError};
use super::params::Params;
use crate::domain::Channel;
use crate::domain::limits::{LimitRules, LimitRulesUpdate, MAX_RULES, Rule, RuleSet};

fn content(channel: Channel, rules: &LimitRules) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("ips".into(), serde_json::json!(rules.ips.rules()));
    map.insert(
        channel.target_limit_key().into(),
        serde_json::json!(rules.targets.rules()),
    );
    map
}

pub async fn show(State(app): State<AppState>, channel: Channel) -> Result<Response, ApiError> {
    let rules = app.otp.limit_rules(channel).await?;
    Ok(error::ok_with(content(channel, &rules)))
}

pub async fn update(
    State(app): State<AppState>,
    channel: Channel,
    params: Params,
) -> Result<Response, ApiError> {
    let target_key = channel.target_limit_key();
    for other in ["phones", "emails", "chat_ids"] {
        if other != target_key && params.contains(other) {
            return Err(ApiError::invalid(
                other,
                format!("is not a limit of {channel}; use \"ips\" or \"{target_key}\""),
            ));
        }
    }
    let update = LimitRulesUpdate {
        ips: rule_set(&params, "ips")?,
        targets: rule_set(&params, target_key)?,
    };
    if update.ips.is_none() && update.targets.is_none() {
        return Err(ApiError::MissingOneOf("ips", target_key));
    }
    let rules = app.otp.update_limit_rules(channel, update).await?;
    Ok(error::ok_with(content(channel, &rules)))
}

/// `[{"minutes": 10, "rate": 5}, ...]`; numbers may be numeric strings.
fn rule_set(params: &Params, field: &'static str) -> Result<Option<RuleSet>, ApiError> {
    let Some(value) = params.structured(field)? else {
        return Ok(None);
    };
    let shape = || {
        ApiError::invalid(
            field,
            format!("must be a list of at most {MAX_RULES} {{\"minutes\", \"rate\"}} objects"),
        )
    };
    let Value::Array(items) = value else {
        return Err(shape());
    };
    if items.len() > MAX_RULES {
        return Err(shape());
    }
    let rules = items
        .iter()
        .map(|item| {
            let number = |key: &str| -> Result<i64, ApiError> {
                match item.get(key) {
                    Some(Value::Number(n)) => n.as_i64(),
                    Some(Value::String(s)) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    ApiError::invalid(
                        field,
                        format!("needs a whole number \"{key}\" in every rule"),
                    )
                })
            };
            Rule::new(number("minutes")?, number("rate")?)
                .map_err(|reason| ApiError::invalid(field, format!("has a bad rule: {reason}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(RuleSet::new(rules, field)?))
}
