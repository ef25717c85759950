//! The server key, and the keyed hash that is all otpd ever stores of a code.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Channel;
use super::code::Password;

pub const MIN_SECRET_BYTES: usize = 32;

/// `OTP_SECRET`: at least 32 bytes, used as the HMAC key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort,
    #[error("cannot read or create the secret file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        Ok(Secret(bytes))
    }

    /// Reads the key kept at `path`, or creates one there (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let file_err = |source| SecretError::File {
            path: path.display().to_string(),
            source,
        };
        match fs::read_to_string(path) {
            Ok(text) => Secret::new(text.trim_end_matches(['\n', '\r'])),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let text = hex::encode(key);
                write_atomically(path, text.as_bytes()).map_err(file_err)?;
                Secret::new(text)
            }
            Err(e) => Err(file_err(e)),
        }
    }

    pub fn code_hash(&self, channel: Channel, target: &str, code: &Password) -> CodeHash {
        CodeHash(self.mac(&[
            channel.as_str().as_bytes(),
            target.as_bytes(),
            code.reveal().as_bytes(),
        ]))
    }

    /// The hash of a code the Telegram bot handed out. It covers the code alone, since
    /// `/target` finds the chat from the code; the "link" part keeps it apart from
    /// every `code_hash`.
    pub fn link_hash(&self, code: &Password) -> CodeHash {
        CodeHash(self.mac(&[b"link", code.reveal().as_bytes()]))
    }

    /// What tells a repeated create from another one under the same `Idempotency-Key`.
    /// Keyed like the codes: the parameters hold the code, and a plain digest of a
    /// six-digit code is undone by trying all million of them.
    pub fn request_fingerprint(&self, channel: Channel, canonical_params: &[u8]) -> String {
        hex::encode(self.mac(&[
            b"idempotency",
            channel.as_str().as_bytes(),
            canonical_params,
        ]))
    }

    /// HMAC over the parts, each followed by a NUL so that no two different part lists
    /// produce the same input (targets and codes never contain NUL).
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part);
            mac.update(&[0]);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Losing or truncating the key would make every live code uncheckable, so it is
/// written to a temporary file, synced, renamed into place and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `HMAC-SHA256(secret, channel | target | code)`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CodeHash(pub [u8; 32]);

impl CodeHash {
    pub fn ct_eq(&self, other: &CodeHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// True when `self` equals any of `hashes`, in time that depends only on how many
    /// there are, not on which (if any) matched or how many bytes agreed.
    pub fn matches_any(&self, hashes: &[CodeHash]) -> bool {
        hashes
            .iter()
            .fold(subtle::Choice::from(0), |acc, h| acc | self.0.ct_eq(&h.0))
            .into()
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHash(***)")
    }
}

/// Compares two secrets of any length without leaking where they differ or how long
/// the expected one is: both are hashed to 32 bytes first.
pub fn constant_time_str_eq(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest;
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fingerprints_are_keyed_and_per_channel() {
        let params = br#"{"password":"123456","phone":"77011234567"}"#;
        let a = Secret::new(vec![1u8; 32]).unwrap();
        let b = Secret::new(vec![2u8; 32]).unwrap();
        assert_eq!(
            a.request_fingerprint(Channel::Sms, params),
            a.request_fingerprint(Channel::Sms, params)
        );
        assert_ne!(
            a.request_fingerprint(Channel::Sms, params),
            b.request_fingerprint(Channel::Sms, params)
        );
        assert_ne!(
            a.request_fingerprint(Channel::Sms, params),
            a.request_fingerprint(Channel::Call, params)
        );
    }

    fn secret() -> Secret {
        Secret::new(vec![7u8; 32]).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Secret::new(vec![1u8; 31]).is_err());
    }

    #[test]
    fn hash_depends_on_channel_target_and_code() {
        let s = secret();
        let code = Password::parse("12345").unwrap();
        let h = s.code_hash(Channel::Sms, "77011234567", &code);
        assert!(h.ct_eq(&s.code_hash(Channel::Sms, "77011234567", &code)));
        assert!(!h.ct_eq(&s.code_hash(Channel::Call, "77011234567", &code)));
        assert!(!h.ct_eq(&s.code_hash(Channel::Sms, "77011234568", &code)));
        assert!(!h.ct_eq(&s.code_hash(
            Channel::Sms,
            "77011234567",
            &Password::parse("12346").unwrap()
        )));
        assert!(h.matches_any(&[s.code_hash(Channel::Email, "x", &code), h]));
        assert!(!h.matches_any(&[]));
    }

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otpd.secret");
        let a = Secret::load_or_create(&path).unwrap();
        let b = Secret::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn str_compare() {
        assert!(constant_time_str_eq(b"admin", b"admin"));
        assert!(!constant_time_str_eq(b"admin", b"admin2"));
    }
}
