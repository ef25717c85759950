use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The ways a code reaches a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Call,
    Email,
    Telegram,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Sms,
        Channel::Call,
        Channel::Email,
        Channel::Telegram,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Call => "call",
            Channel::Email => "email",
            Channel::Telegram => "telegram",
        }
    }

    /// The request field that names the recipient on this channel.
    pub const fn target_field(self) -> &'static str {
        match self {
            Channel::Sms | Channel::Call => "phone",
            Channel::Email => "email",
            Channel::Telegram => "chat_id",
        }
    }

    /// The key of `POST /limit/{channel}` that holds the per-target rules.
    pub const fn target_limit_key(self) -> &'static str {
        match self {
            Channel::Sms | Channel::Call => "phones",
            Channel::Email => "emails",
            Channel::Telegram => "chat_ids",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s).ok_or(())
    }
}
