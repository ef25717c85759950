//! What is sent: per-channel templates with a `{password}` placeholder.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::code::Password;
use super::{Channel, InvalidField};

pub const PLACEHOLDER: &str = "{password}";

const MAX_MESSAGE_CHARS: usize = 1_600;
const MAX_SUBJECT_CHARS: usize = 255;
const MAX_TEXT_CHARS: usize = 20_000;

const DEFAULT_MESSAGE: &str = "Your code is {password}";
const DEFAULT_SUBJECT: &str = "Your verification code";
const DEFAULT_TEXT: &str = "Your verification code is {password}";

/// The rendered message of one delivery. It contains the code, so it lives only in the
/// delivery job and is erased when the job ends.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MessageContent {
    Text {
        text: String,
    },
    Email {
        subject: String,
        text: String,
        html: Option<String>,
    },
}

impl std::fmt::Debug for MessageContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageContent(***)")
    }
}

/// The caller's templates, as given (all optional). They may hold a caller-supplied
/// code, so `Debug` shows only which are present.
#[derive(Clone, Default)]
pub struct Templates {
    pub message: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("message", &self.message.is_some())
            .field("subject", &self.subject.is_some())
            .field("text", &self.text.is_some())
            .field("html", &self.html.is_some())
            .finish()
    }
}

impl Templates {
    /// Checks the templates and fills in `password`. When the code was generated
    /// (`generated`), every template the caller gave must say where the code goes,
    /// or the person would receive a message without it.
    pub fn render(
        &self,
        channel: Channel,
        password: &Password,
        generated: bool,
    ) -> Result<MessageContent, InvalidField> {
        let shown = match channel {
            Channel::Call => password.spoken(),
            _ => password.reveal().to_owned(),
        };
        let fill = |field: &'static str,
                    given: &Option<String>,
                    default: &str,
                    max: usize|
         -> Result<String, InvalidField> {
            let template = given.as_deref().unwrap_or(default);
            if template.chars().count() > max {
                return Err(InvalidField::new(
                    field,
                    format!("must be at most {max} characters"),
                ));
            }
            if generated && given.is_some() && !template.contains(PLACEHOLDER) {
                return Err(InvalidField::new(
                    field,
                    "must contain {password} when no \"password\" is given",
                ));
            }
            Ok(template.replace(PLACEHOLDER, &shown))
        };
        match channel {
            Channel::Sms | Channel::Call | Channel::Telegram => Ok(MessageContent::Text {
                text: fill("message", &self.message, DEFAULT_MESSAGE, MAX_MESSAGE_CHARS)?,
            }),
            Channel::Email => {
                let subject = self.subject.as_deref().unwrap_or(DEFAULT_SUBJECT);
                if subject.chars().count() > MAX_SUBJECT_CHARS {
                    return Err(InvalidField::new(
                        "subject",
                        format!("must be at most {MAX_SUBJECT_CHARS} characters"),
                    ));
                }
                // A line break in a subject would let a caller add mail headers.
                if subject.chars().any(char::is_control) {
                    return Err(InvalidField::new("subject", "must be one line"));
                }
                let text = fill("text", &self.text, DEFAULT_TEXT, MAX_TEXT_CHARS)?;
                let html = match &self.html {
                    None => None,
                    Some(_) => Some(fill("html", &self.html, "", MAX_TEXT_CHARS * 3)?),
                };
                Ok(MessageContent::Email {
                    subject: subject.replace(PLACEHOLDER, password.reveal()),
                    text,
                    html,
                })
            }
        }
    }
}

/// The Telegram bot's reply: `{password}` is the code, `{lifetime}` how long it lasts
/// in words ("5 minutes"). The template was checked at start.
pub fn link_message(template: &str, password: &Password, lifetime: Duration) -> MessageContent {
    MessageContent::Text {
        text: template
            .replace(PLACEHOLDER, password.reveal())
            .replace("{lifetime}", &in_words(lifetime)),
    }
}

fn in_words(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> Password {
        Password::parse("4242").unwrap()
    }

    #[test]
    fn default_templates_carry_the_code() {
        let m = Templates::default()
            .render(Channel::Sms, &code(), true)
            .unwrap();
        assert_eq!(
            m,
            MessageContent::Text {
                text: "Your code is 4242".into()
            }
        );
    }

    #[test]
    fn a_given_message_without_placeholder_is_sent_as_is_with_a_given_password() {
        let t = Templates {
            message: Some("Your OTP is 4242".into()),
            ..Default::default()
        };
        let m = t.render(Channel::Sms, &code(), false).unwrap();
        assert_eq!(
            m,
            MessageContent::Text {
                text: "Your OTP is 4242".into()
            }
        );
    }

    #[test]
    fn the_bot_says_the_code_and_its_lifetime_in_words() {
        let m = link_message(
            "Code {password}, valid {lifetime}",
            &code(),
            Duration::from_secs(300),
        );
        assert_eq!(
            m,
            MessageContent::Text {
                text: "Code 4242, valid 5 minutes".into()
            }
        );
        assert_eq!(in_words(Duration::from_secs(3600)), "1 hour");
        assert_eq!(in_words(Duration::from_secs(90)), "90 seconds");
        assert_eq!(in_words(Duration::from_secs(60)), "1 minute");
    }

    #[test]
    fn a_call_reads_the_code_one_character_at_a_time() {
        let m = Templates::default()
            .render(Channel::Call, &code(), true)
            .unwrap();
        assert_eq!(
            m,
            MessageContent::Text {
                text: "Your code is 4 2 4 2".into()
            }
        );
    }

    #[test]
    fn a_generated_code_needs_a_placeholder() {
        let t = Templates {
            message: Some("hello".into()),
            ..Default::default()
        };
        let err = t.render(Channel::Telegram, &code(), true).unwrap_err();
        assert_eq!(err.field, "message");
    }

    #[test]
    fn email_subject_must_be_one_line() {
        let t = Templates {
            subject: Some("Hi\r\nBcc: x@example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            t.render(Channel::Email, &code(), true).unwrap_err().field,
            "subject"
        );
    }
}
