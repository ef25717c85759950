//! The rule for one check of a code, kept apart from storage so every store applies it
//! the same way inside its own atomic step.

use super::secret::CodeHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Verified,
    InvalidPassword,
    AttemptsExceeded,
}

/// Wrong guesses recorded against one (channel, target) since its last send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuessState {
    pub failures: u32,
    pub burned: bool,
}

/// What the store must write after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckEffect {
    /// Nothing changes (no live code to guess at, or already burned).
    None,
    /// Right code: every live code of the target is spent and the guess count cleared.
    SpendAll,
    /// Wrong code: record the new count; when `burn`, the live codes are destroyed.
    RecordFailure(GuessState),
}

pub fn decide_check(
    state: GuessState,
    live_codes: &[CodeHash],
    given: &CodeHash,
    max_attempts: u32,
) -> (CheckOutcome, CheckEffect) {
    if state.burned {
        return (CheckOutcome::AttemptsExceeded, CheckEffect::None);
    }
    if given.matches_any(live_codes) {
        return (CheckOutcome::Verified, CheckEffect::SpendAll);
    }
    if live_codes.is_empty() {
        return (CheckOutcome::InvalidPassword, CheckEffect::None);
    }
    let failures = state.failures.saturating_add(1);
    let next = GuessState {
        failures,
        burned: failures >= max_attempts,
    };
    (
        CheckOutcome::InvalidPassword,
        CheckEffect::RecordFailure(next),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIGHT: CodeHash = CodeHash([1; 32]);
    const WRONG: CodeHash = CodeHash([2; 32]);

    #[test]
    fn right_code_spends_all() {
        let (o, e) = decide_check(GuessState::default(), &[WRONG, RIGHT], &RIGHT, 5);
        assert_eq!((o, e), (CheckOutcome::Verified, CheckEffect::SpendAll));
    }

    #[test]
    fn the_last_allowed_wrong_guess_burns() {
        let state = GuessState {
            failures: 4,
            burned: false,
        };
        let (o, e) = decide_check(state, &[RIGHT], &WRONG, 5);
        assert_eq!(o, CheckOutcome::InvalidPassword);
        assert_eq!(
            e,
            CheckEffect::RecordFailure(GuessState {
                failures: 5,
                burned: true
            })
        );
    }

    #[test]
    fn burned_refuses_even_the_right_code() {
        let state = GuessState {
            failures: 5,
            burned: true,
        };
        assert_eq!(
            decide_check(state, &[RIGHT], &RIGHT, 5).0,
            CheckOutcome::AttemptsExceeded
        );
    }

    #[test]
    fn no_live_code_records_nothing() {
        let (o, e) = decide_check(GuessState::default(), &[], &WRONG, 5);
        assert_eq!((o, e), (CheckOutcome::InvalidPassword, CheckEffect::None));
    }
}
