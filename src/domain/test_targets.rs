//! `OTP_TEST_TARGETS`: targets with a fixed code, for app-store reviewers and CI. Nothing
//! is stored or sent for them, no limit or cap counts them, and their code always works.

use std::collections::HashMap;

use super::code::Password;
use super::secret::constant_time_str_eq;
use super::{Channel, Target};

#[derive(Debug, Clone, Default)]
pub struct TestTargets(HashMap<(Channel, String), Password>);

impl TestTargets {
    /// `channel:target=code` entries, comma-separated, e.g.
    /// `sms:79990000000=123456,email:qa@example.com=000000`. Targets are normalised as
    /// requests' are, so any spelling of the number matches.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut targets = HashMap::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| format!("{why} in entry {}", describe(entry));
            let (channel, rest) = entry
                .split_once(':')
                .ok_or_else(|| bad("no \"channel:\""))?;
            let (target, code) = rest.rsplit_once('=').ok_or_else(|| bad("no \"=code\""))?;
            let channel: Channel = channel
                .trim()
                .parse()
                .map_err(|()| bad("an unknown channel"))?;
            let target = Target::parse(channel, target.trim())
                .map_err(|e| bad(&format!("an invalid target ({})", e.reason)))?;
            let code = match code.trim() {
                "" => return Err(bad("an empty code")),
                code => Password::parse(code).map_err(|e| bad(&e.reason))?,
            };
            targets.insert((channel, target.key()), code);
        }
        Ok(TestTargets(targets))
    }

    /// The fixed code of this target, if it is a test target.
    pub fn code_of(&self, channel: Channel, target_key: &str) -> Option<&Password> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(&(channel, target_key.to_owned()))
    }

    pub fn matches(code: &Password, given: &Password) -> bool {
        constant_time_str_eq(given.reveal().as_bytes(), code.reveal().as_bytes())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An entry named in an error without its code (the setting is a secret of sorts).
fn describe(entry: &str) -> String {
    match entry.rsplit_once('=') {
        Some((target, _)) => format!("{target:?}"),
        None => format!("{entry:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_normalised_like_requests() {
        let t = TestTargets::parse("sms:+7 (999) 000-00-00=123456, email:QA@Example.com=000000")
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.code_of(Channel::Sms, "79990000000").map(Password::reveal),
            Some("123456")
        );
        assert_eq!(
            t.code_of(Channel::Email, "QA@example.com")
                .map(Password::reveal),
            Some("000000")
        );
        assert!(t.code_of(Channel::Call, "79990000000").is_none());
    }

    #[test]
    fn a_bad_entry_is_refused_without_showing_its_code() {
        for raw in [
            "sms79990000000=1234",
            "sms:79990000000",
            "fax:1=1234",
            "sms:12=1234",
        ] {
            let e = TestTargets::parse(raw).unwrap_err();
            assert!(!e.contains("=1234"), "{e}");
        }
        assert!(TestTargets::parse("sms:79990000000= ").is_err());
    }
}
