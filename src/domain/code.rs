//! The code a person types: supplied by the caller or generated here.

use std::fmt;
use std::time::Duration;

use rand::Rng;

use super::InvalidField;

const MAX_PASSWORD_CHARS: usize = 64;

/// A one-time code. Its `Debug` never shows the value, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        if raw.chars().count() > MAX_PASSWORD_CHARS {
            return Err(InvalidField::new(
                "password",
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidField::new(
                "password",
                "must not contain control characters",
            ));
        }
        Ok(Password(raw.to_owned()))
    }

    /// `len` decimal digits from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub fn generate(len: u8) -> Self {
        let mut rng = rand::thread_rng();
        Password(
            (0..len)
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect(),
        )
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The code with its characters spaced ("4 2 4 2"), so that a voice reads each one
    /// alone instead of as a number ("four thousand two hundred...").
    pub fn spoken(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 2);
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// How long a code stays valid: at least a second, at most the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(Duration);

impl Lifetime {
    pub fn from_secs(secs: i64, max_secs: u64) -> Result<Self, InvalidField> {
        match u64::try_from(secs) {
            Ok(s) if (1..=max_secs).contains(&s) => Ok(Lifetime(Duration::from_secs(s))),
            _ => Err(InvalidField::new(
                "lifetime",
                format!("must be between 1 and {max_secs} seconds"),
            )),
        }
    }

    pub fn duration(self) -> Duration {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_digits_of_the_asked_length() {
        for len in [4u8, 6, 8, 10] {
            let p = Password::generate(len);
            assert_eq!(p.reveal().len(), usize::from(len));
            assert!(p.reveal().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn debug_hides_the_code() {
        assert_eq!(
            format!("{:?}", Password::parse("12345").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn lifetime_bounds() {
        assert!(Lifetime::from_secs(0, 86_400).is_err());
        assert!(Lifetime::from_secs(-5, 86_400).is_err());
        assert!(Lifetime::from_secs(86_401, 86_400).is_err());
        assert_eq!(
            Lifetime::from_secs(300, 86_400)
                .unwrap()
                .duration()
                .as_secs(),
            300
        );
    }
}
