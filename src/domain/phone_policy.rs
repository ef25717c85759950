//! Which phones otpd sends SMS and calls to: numbers valid for their country, of a kind
//! that can receive a code (not premium-rate or shared-cost lines, the tools of SMS
//! pumping), in the countries the operator allows. Decided from libphonenumber's metadata.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use phonenumber::Type;

use super::Channel;
use super::phone_kind;
use super::target::Phone;

/// An ISO 3166-1 alpha-2 country code, upper-case, as libphonenumber's metadata knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Country([u8; 2]);

impl Country {
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters (see from_str).
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for Country {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        let upper = raw.trim().to_ascii_uppercase();
        let known = upper.parse::<phonenumber::country::Id>().is_ok();
        match upper.as_bytes() {
            [a, b] if known && a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
                Ok(Country([*a, *b]))
            }
            _ => Err(format!("{raw:?} is not an ISO 3166 country code")),
        }
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a phone was refused; `label` names it in the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneRefusal {
    /// Not a number of any country's numbering plan.
    Invalid,
    /// A real number of a kind that should not get a code by this channel.
    Kind(&'static str),
    CountryDenied(Country),
    CountryNotAllowed(Country),
}

impl PhoneRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            PhoneRefusal::Invalid => "invalid_number",
            PhoneRefusal::Kind(kind) => kind,
            PhoneRefusal::CountryDenied(_) => "country_denied",
            PhoneRefusal::CountryNotAllowed(_) => "country_not_allowed",
        }
    }

    /// The reason given to the caller, after `"phone" `.
    pub fn reason(&self, channel: Channel) -> String {
        match self {
            PhoneRefusal::Invalid => "is not a valid number for its country".into(),
            PhoneRefusal::Kind(kind) => format!(
                "is a {} number, which cannot receive codes by {}",
                kind.replace('_', "-"),
                channel.as_str()
            ),
            PhoneRefusal::CountryDenied(country) => {
                format!("is in {country}, where codes are not sent")
            }
            PhoneRefusal::CountryNotAllowed(country) => {
                format!("is in {country}, which is not among the countries codes are sent to")
            }
        }
    }
}

/// `OTP_PHONE_COUNTRIES_ALLOW` / `OTP_PHONE_COUNTRIES_DENY`, and the number checks.
#[derive(Debug, Clone, Default)]
pub struct PhonePolicy {
    /// When set, only these countries.
    pub allow: Option<BTreeSet<Country>>,
    pub deny: BTreeSet<Country>,
}

impl PhonePolicy {
    /// Loads libphonenumber's metadata (it loads on first use, and the first requests
    /// would wait ~100 ms for it: the benchmark's p99 showed it).
    pub fn warm_up() {
        if let Ok(number) = phonenumber::parse(None, "+77011234567") {
            let _ = phone_kind::classify(&number);
        }
    }

    /// The country of a number, whatever the lists say.
    pub fn country_of(phone: &Phone) -> Option<Country> {
        classify(phone).map(|(country, _)| country)
    }

    /// The phone's country when `channel` may send to it.
    pub fn admit(&self, channel: Channel, phone: &Phone) -> Result<Country, PhoneRefusal> {
        // A number is valid when its country's plan gives it a kind: libphonenumber's
        // `is_valid` decides exactly that, so asking it too would run every pattern
        // again (a third of the time this took).
        let (country, kind) = classify(phone).ok_or(PhoneRefusal::Invalid)?;
        if kind == Type::Unknown {
            return Err(PhoneRefusal::Invalid);
        }
        if let Some(kind) = refused_kind(channel, kind) {
            return Err(PhoneRefusal::Kind(kind));
        }
        if self.deny.contains(&country) {
            return Err(PhoneRefusal::CountryDenied(country));
        }
        if self
            .allow
            .as_ref()
            .is_some_and(|allow| !allow.contains(&country))
        {
            return Err(PhoneRefusal::CountryNotAllowed(country));
        }
        Ok(country)
    }
}

/// The number's country and its kind there; `None` when no country claims it.
fn classify(phone: &Phone) -> Option<(Country, Type)> {
    let number = phonenumber::parse(None, format!("+{}", phone.digits())).ok()?;
    let (region, kind) = phone_kind::classify(&number)?;
    Some((region.id().parse().ok()?, kind))
}

/// SMS go to mobiles and fixed lines (some take SMS); a call may also ring a VoIP or
/// personal number. Premium-rate and shared-cost lines earn their owner money per
/// message or minute, which is what SMS pumping is after.
fn refused_kind(channel: Channel, kind: Type) -> Option<&'static str> {
    let accepted = match kind {
        Type::Mobile | Type::FixedLine | Type::FixedLineOrMobile => true,
        Type::Voip | Type::PersonalNumber => channel == Channel::Call,
        _ => false,
    };
    if accepted {
        return None;
    }
    Some(match kind {
        Type::PremiumRate => "premium_rate",
        Type::SharedCost => "shared_cost",
        Type::TollFree => "toll_free",
        Type::Voip => "voip",
        Type::PersonalNumber => "personal_number",
        Type::Pager => "pager",
        Type::Uan => "uan",
        Type::Voicemail => "voicemail",
        Type::Emergency | Type::ShortCode => "short_code",
        _ => "unknown_kind",
    })
}

/// A comma-separated list of country codes, as the settings give them.
pub fn parse_countries(raw: &str) -> Result<BTreeSet<Country>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(policy: &PhonePolicy, channel: Channel, raw: &str) -> Result<String, String> {
        let phone = Phone::parse(raw).map_err(|e| e.to_string())?;
        policy
            .admit(channel, &phone)
            .map(|c| c.to_string())
            .map_err(|r| r.label().to_string())
    }

    #[test]
    fn real_mobiles_are_admitted_with_their_country() {
        let open = PhonePolicy::default();
        assert_eq!(admit(&open, Channel::Sms, "77011234567"), Ok("KZ".into()));
        assert_eq!(
            admit(&open, Channel::Sms, "+7 912 345-67-89"),
            Ok("RU".into())
        );
        assert_eq!(admit(&open, Channel::Sms, "447400123456"), Ok("GB".into()));
        assert_eq!(admit(&open, Channel::Call, "12015550123"), Ok("US".into()));
    }

    #[test]
    fn numbers_outside_every_plan_and_premium_lines_are_refused() {
        let open = PhonePolicy::default();
        assert_eq!(
            admit(&open, Channel::Sms, "70000000000"),
            Err("invalid_number".into())
        );
        // A UK premium-rate (09) and a Swiss shared-cost (0840) number.
        assert_eq!(
            admit(&open, Channel::Sms, "449098790000"),
            Err("premium_rate".into())
        );
        assert_eq!(
            admit(&open, Channel::Call, "449098790000"),
            Err("premium_rate".into())
        );
        assert_eq!(
            admit(&open, Channel::Sms, "41840123456"),
            Err("shared_cost".into())
        );
        // US toll-free: no SMS.
        assert_eq!(
            admit(&open, Channel::Sms, "18002345678"),
            Err("toll_free".into())
        );
    }

    #[test]
    fn allow_and_deny_lists_decide_by_country() {
        let only_kz = PhonePolicy {
            allow: Some(parse_countries("kz, uz").unwrap()),
            deny: BTreeSet::new(),
        };
        assert_eq!(
            admit(&only_kz, Channel::Sms, "77011234567"),
            Ok("KZ".into())
        );
        assert_eq!(
            admit(&only_kz, Channel::Sms, "79123456789"),
            Err("country_not_allowed".into())
        );
        let no_gb = PhonePolicy {
            allow: None,
            deny: parse_countries("GB").unwrap(),
        };
        assert_eq!(
            admit(&no_gb, Channel::Call, "447400123456"),
            Err("country_denied".into())
        );
        assert_eq!(admit(&no_gb, Channel::Call, "77011234567"), Ok("KZ".into()));
    }

    #[test]
    fn country_lists_must_name_real_countries() {
        assert!(parse_countries("KZ,XX").is_err());
        assert!(parse_countries("KAZ").is_err());
        assert_eq!(parse_countries("").unwrap().len(), 0);
    }
}
