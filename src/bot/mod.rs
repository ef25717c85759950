//! The Telegram bot: a user writes to it in a private chat and gets a code, which the
//! application trades for the chat id at `/target`. Updates arrive by webhook
//! (`http::telegram`) or long polling (`polling`); both end in `handle`.

pub mod cli;
pub mod polling;

use serde_json::Value;

use crate::domain::link::{CodeRequest, TelegramLink};
use crate::store::StoreError;

/// The chat to send a code to, when the update is a message from a person in a
/// private chat; anything else (edited messages, channel posts, groups, bots, updates
/// of kinds added later) asks for nothing. Read field by field, so an update with
/// fields this version does not know is never refused.
pub fn chat_asking_for_code(update: &Value) -> Option<i64> {
    let message = update.get("message")?;
    let chat = message.get("chat")?;
    if chat.get("type")?.as_str()? != "private" {
        return None;
    }
    let from = message.get("from")?;
    if from.get("is_bot").and_then(Value::as_bool).unwrap_or(false) {
        return None;
    }
    chat.get("id")?.as_i64()
}

/// Handles one update exactly once (a repeated `update_id` is skipped).
pub async fn handle(link: &TelegramLink, update_id: i64, update: &Value) -> Result<(), StoreError> {
    let Some(chat_id) = chat_asking_for_code(update) else {
        return link.skip_update(update_id).await;
    };
    match link.code_for_chat(chat_id, Some(update_id)).await? {
        CodeRequest::Sent => tracing::info!(update_id, "the bot sent a chat a code"),
        CodeRequest::AlreadyHandled => tracing::debug!(update_id, "update seen before"),
        CodeRequest::Limited(hit) => tracing::info!(
            update_id,
            retry_after_secs = hit.retry_after_secs,
            "a chat asked for codes too often; no code sent"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(chat: Value, from: Value) -> Value {
        json!({"update_id": 1, "message": {"message_id": 5, "date": 1, "chat": chat, "from": from, "text": "/start abc", "some_future_field": {"x": 1}}})
    }

    #[test]
    fn only_people_in_private_chats_get_codes() {
        let person = json!({"id": 42, "is_bot": false, "first_name": "A"});
        let private = json!({"id": 42, "type": "private", "first_name": "A"});
        assert_eq!(
            chat_asking_for_code(&message(private.clone(), person.clone())),
            Some(42)
        );
        let group = json!({"id": -100, "type": "group", "title": "G"});
        assert_eq!(chat_asking_for_code(&message(group, person.clone())), None);
        let bot = json!({"id": 43, "is_bot": true, "first_name": "B"});
        assert_eq!(chat_asking_for_code(&message(private.clone(), bot)), None);
        let edited = json!({"update_id": 2, "edited_message": {"chat": private, "from": person}});
        assert_eq!(chat_asking_for_code(&edited), None);
        let post = json!({"update_id": 3, "channel_post": {"chat": {"id": -5, "type": "channel"}}});
        assert_eq!(chat_asking_for_code(&post), None);
        assert_eq!(
            chat_asking_for_code(&json!({"update_id": 4, "message": "odd"})),
            None
        );
    }
}
