//! What otpd decides: valid targets and codes, limits, and the create/check use cases.
//! Nothing here knows about HTTP or about how state is stored.

pub mod abuse;
pub mod channel;
pub mod code;
pub mod limits;
pub mod link;
pub mod message;
mod phone_kind;
pub mod phone_policy;
pub mod pumping;
pub mod secret;
pub mod service;
pub mod target;
pub mod test_targets;
pub mod verification;

pub use channel::Channel;
pub use target::Target;

/// A request field that failed validation; the HTTP layer names the field in its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{field}\" {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
