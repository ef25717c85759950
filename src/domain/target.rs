//! Recipients, normalised so that every spelling of one phone or address is one target.

use std::fmt;

use super::{Channel, InvalidField};

/// Longest raw input looked at; anything longer is refused before any work is done.
const MAX_RAW_LEN: usize = 320;

/// A phone number as its digits only (E.164 without the `+`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let invalid = || InvalidField::new("phone", "must be 7 to 15 digits");
        if raw.len() > MAX_RAW_LEN {
            return Err(invalid());
        }
        let mut digits = String::with_capacity(15);
        for (i, c) in raw.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' | '(' if i == 0 => {}
                ' ' | '-' | '(' | ')' | '.' if i > 0 => {}
                _ => return Err(invalid()),
            }
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(invalid());
        }
        Ok(Phone(digits))
    }

    pub fn digits(&self) -> &str {
        &self.0
    }
}

/// An e-mail address, trimmed, with its domain lower-cased (the local part is
/// case-sensitive by the RFC, so it is kept as given).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let invalid =
            || InvalidField::new("email", "must be an e-mail address like name@example.com");
        if raw.len() > 254 {
            return Err(invalid());
        }
        let (local, domain) = raw.rsplit_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"@<>()[],;:\"\\".contains(&b));
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !local_ok || !domain_ok {
            return Err(invalid());
        }
        Ok(Email(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Telegram chat id: a signed 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChatId(i64);

impl ChatId {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        raw.parse::<i64>().map(ChatId).map_err(|_| {
            InvalidField::new("chat_id", "must be a whole number (a Telegram chat id)")
        })
    }

    pub fn value(self) -> i64 {
        self.0
    }
}

/// Whom a code is sent to; which kind depends on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Phone(Phone),
    Email(Email),
    ChatId(ChatId),
}

impl Target {
    pub fn parse(channel: Channel, raw: &str) -> Result<Self, InvalidField> {
        match channel {
            Channel::Sms | Channel::Call => Phone::parse(raw).map(Target::Phone),
            Channel::Email => Email::parse(raw).map(Target::Email),
            Channel::Telegram => ChatId::parse(raw).map(Target::ChatId),
        }
    }

    /// The normalised form, used as the storage key and given to providers.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Phone(p) => f.write_str(p.digits()),
            Target::Email(e) => f.write_str(e.as_str()),
            Target::ChatId(c) => write!(f, "{}", c.value()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_spellings_normalise_to_digits() {
        for raw in ["+7 (701) 123-45-67", "77011234567", "7.701.123.45.67"] {
            assert_eq!(Phone::parse(raw).unwrap().digits(), "77011234567", "{raw}");
        }
    }

    #[test]
    fn bad_phones_are_refused() {
        let long = "1".repeat(10_000);
        for raw in [
            "123456",
            "1234567890123456",
            "7701abc4567",
            "٧٧٠١١٢٣٤٥٦٧",
            "77+011234567",
            "-77011234567",
            ")77011234567",
            "1; DROP TABLE codes",
            long.as_str(),
        ] {
            assert!(Phone::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn email_domain_is_lowercased_local_part_kept() {
        assert_eq!(
            Email::parse("Foo.Bar@Example.COM").unwrap().as_str(),
            "Foo.Bar@example.com"
        );
    }

    #[test]
    fn bad_emails_are_refused() {
        for raw in [
            "foo",
            "@example.com",
            "foo@",
            "foo@localhost",
            "a b@example.com",
            "foo@exa_mple.com",
            "x'--@example.com@",
            "foo@-bad.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn chat_ids_are_signed_64_bit() {
        assert_eq!(
            ChatId::parse("-1001234567890").unwrap().value(),
            -1_001_234_567_890
        );
        assert!(ChatId::parse("9223372036854775808").is_err());
        assert!(ChatId::parse("12.5").is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn separator() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(""), Just(" "), Just("-"), Just(".")]
    }

    proptest! {
        #[test]
        fn every_spelling_of_a_phone_is_one_target(
            digits in "[1-9][0-9]{6,14}",
            separators in proptest::collection::vec(separator(), 15),
            plus: bool,
        ) {
            let mut raw = String::from(if plus { "+" } else { "" });
            for (i, d) in digits.chars().enumerate() {
                if i > 0 {
                    raw.push_str(separators[i]);
                }
                raw.push(d);
            }
            let phone = Phone::parse(&raw).unwrap();
            prop_assert_eq!(phone.digits(), digits.as_str());
        }

        #[test]
        fn a_phone_is_seven_to_fifteen_digits_or_refused(raw in ".{0,40}") {
            if let Ok(phone) = Phone::parse(&raw) {
                prop_assert!((7..=15).contains(&phone.digits().len()));
                prop_assert!(phone.digits().bytes().all(|b| b.is_ascii_digit()));
            }
        }

        #[test]
        fn e_mail_domains_are_case_blind_and_normalising_twice_changes_nothing(
            local in "[A-Za-z0-9._%+-]{1,20}",
            domain in "[a-z]{1,10}\\.[a-z]{2,6}",
        ) {
            let upper = Email::parse(&format!("{local}@{}", domain.to_uppercase()));
            let lower = Email::parse(&format!("{local}@{domain}"));
            prop_assert_eq!(upper.clone().ok(), lower.ok());
            if let Ok(email) = upper {
                prop_assert_eq!(Email::parse(email.as_str()).ok(), Some(email));
            }
        }
    }
}
