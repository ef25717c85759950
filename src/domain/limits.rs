//! Send limits: "at most `rate` accepted sends in the last `minutes`", per IP and per target.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::InvalidField;
use crate::clock::Timestamp;

pub const MAX_RULES: usize = 10;
const MAX_MINUTES: u32 = 366 * 24 * 60;
const MAX_RATE: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    pub minutes: u32,
    pub rate: u32,
}

impl Rule {
    pub fn new(minutes: i64, rate: i64) -> Result<Self, String> {
        let minutes = u32::try_from(minutes)
            .ok()
            .filter(|m| (1..=MAX_MINUTES).contains(m))
            .ok_or(format!("\"minutes\" must be between 1 and {MAX_MINUTES}"))?;
        let rate = u32::try_from(rate)
            .ok()
            .filter(|r| (1..=MAX_RATE).contains(r))
            .ok_or(format!("\"rate\" must be between 1 and {MAX_RATE}"))?;
        Ok(Rule { minutes, rate })
    }

    pub fn window(self) -> Duration {
        Duration::from_secs(u64::from(self.minutes) * 60)
    }
}

/// A rule as read back from storage, checked again on the way in.
#[derive(Deserialize)]
struct RawRule {
    minutes: i64,
    rate: i64,
}

impl TryFrom<RawRule> for Rule {
    type Error = String;
    fn try_from(raw: RawRule) -> Result<Self, String> {
        Rule::new(raw.minutes, raw.rate)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.minutes == 1 {
            "minute"
        } else {
            "minutes"
        };
        write!(f, "{} in {} {unit}", self.rate, self.minutes)
    }
}

/// A validated list of rules for one kind of key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Rule>", into = "Vec<Rule>")]
pub struct RuleSet(Vec<Rule>);

impl RuleSet {
    pub fn new(rules: Vec<Rule>, field: &'static str) -> Result<Self, InvalidField> {
        if rules.len() > MAX_RULES {
            return Err(InvalidField::new(
                field,
                format!("must have at most {MAX_RULES} rules"),
            ));
        }
        Ok(RuleSet(rules))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The longest window; sends older than this can no longer matter.
    pub fn longest_window(&self) -> Duration {
        self.0.iter().map(|r| r.window()).max().unwrap_or_default()
    }

    /// The most sends any rule needs to look back at.
    pub fn largest_rate(&self) -> u32 {
        self.0.iter().map(|r| r.rate).max().unwrap_or(0)
    }

    /// Decides whether one more send is allowed, given the times of earlier accepted
    /// sends, newest first (at least `largest_rate()` of them when there are that many).
    /// On refusal, names the rule and how long until it allows a send again.
    pub fn check(&self, sends_newest_first: &[Timestamp], now: Timestamp) -> Option<LimitHit> {
        self.0
            .iter()
            .filter_map(|rule| {
                let since = now.minus(rule.window());
                let in_window = sends_newest_first
                    .iter()
                    .take_while(|t| **t > since)
                    .count();
                if in_window < rule.rate as usize {
                    return None;
                }
                // The send that must leave the window before another one fits.
                let blocking = sends_newest_first[rule.rate as usize - 1];
                let retry_after_secs = now.secs_until(blocking.plus(rule.window())).max(1);
                Some(LimitHit {
                    rule: *rule,
                    retry_after_secs,
                })
            })
            .max_by_key(|hit| hit.retry_after_secs)
    }
}

impl TryFrom<Vec<Rule>> for RuleSet {
    type Error = String;
    fn try_from(rules: Vec<Rule>) -> Result<Self, String> {
        RuleSet::new(rules, "rules").map_err(|e| e.to_string())
    }
}

impl From<RuleSet> for Vec<Rule> {
    fn from(set: RuleSet) -> Self {
        set.0
    }
}

/// The rules in force for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRules {
    pub ips: RuleSet,
    pub targets: RuleSet,
}

impl Default for LimitRules {
    /// Per target 5 in 10 minutes; no IP rule.
    fn default() -> Self {
        LimitRules {
            ips: RuleSet::default(),
            targets: RuleSet(vec![Rule {
                minutes: 10,
                rate: 5,
            }]),
        }
    }
}

/// A change to the rules: a present set replaces the one in force.
#[derive(Debug, Clone, Default)]
pub struct LimitRulesUpdate {
    pub ips: Option<RuleSet>,
    pub targets: Option<RuleSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Ip,
    Target,
    /// Wrong codes given to `/target`, per ip.
    FailedLookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    pub rule: Rule,
    pub retry_after_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    #[test]
    fn allows_up_to_rate_then_refuses_until_the_oldest_leaves_the_window() {
        let set = RuleSet(vec![Rule {
            minutes: 10,
            rate: 3,
        }]);
        let now = at(1_000);
        assert_eq!(set.check(&[at(990), at(900)], now), None);
        let hit = set.check(&[at(990), at(900), at(700)], now).unwrap();
        assert_eq!(
            hit.rule,
            Rule {
                minutes: 10,
                rate: 3
            }
        );
        // at(700) leaves the 600 s window at 1300.
        assert_eq!(hit.retry_after_secs, 300);
        // Sends outside the window do not count.
        assert_eq!(set.check(&[at(990), at(900), at(400)], now), None);
    }

    #[test]
    fn the_longest_wait_wins_when_several_rules_refuse() {
        let set = RuleSet(vec![
            Rule {
                minutes: 1,
                rate: 1,
            },
            Rule {
                minutes: 60,
                rate: 2,
            },
        ]);
        let now = at(10_000);
        let hit = set.check(&[at(9_990), at(9_000)], now).unwrap();
        assert_eq!(hit.rule.minutes, 60);
        assert_eq!(hit.retry_after_secs, 2_600);
    }

    #[test]
    fn rule_bounds() {
        assert!(Rule::new(0, 1).is_err());
        assert!(Rule::new(1, 0).is_err());
        assert!(Rule::new(-1, 5).is_err());
        assert!(Rule::new(10, 5).is_ok());
        assert_eq!(Rule::new(10, 5).unwrap().to_string(), "5 in 10 minutes");
    }
}
