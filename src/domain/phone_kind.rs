//! The region and the kind of a phone number, from libphonenumber's metadata, decided as
//! the `phonenumber` crate decides them (`PhoneNumber::metadata`, `number_type`), with
//! each region's patterns compiled once and kept.
//!
//! The crate looks every pattern up in one process-wide cache of 100 compiled regexes,
//! behind a mutex, hashing the pattern's whole text at each lookup, and it finds a
//! number's region again for its kind and again for its country: that was most of the
//! phone check's time per create (BENCHMARKS.md, finding 25). Traffic from more regions
//! than the cache holds would also compile patterns again on every request.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};

use phonenumber::metadata::{DATABASE, Descriptor, Metadata};
use phonenumber::{PhoneNumber, Type};
use regex::{RegexSet, RegexSetBuilder, SetMatches};

/// The region whose numbering plan `number` belongs to, and the number's kind there
/// (`Type::Unknown` when the plan gives it none); `None` when no region claims it.
pub fn classify(number: &PhoneNumber) -> Option<(&'static Metadata, Type)> {
    let code = number.code().value();
    // As the crate reads it: the national number's value (leading zeros aside).
    let national = number.national().value().to_string();
    let (region, hits) = region_of(code, &national)?;
    Some((region.meta, region.kind(&hits)))
}

/// `validator::source_for`: a region of its own for most codes; among regions sharing a
/// code, the first whose leading digits start the number or, lacking those, whose plan
/// gives it a kind. With the region, which of its patterns start the number.
fn region_of(code: u16, national: &str) -> Option<(&'static Region, Hits)> {
    let ids = DATABASE.region(&code)?;
    let own = match ids.as_slice() {
        ["001"] => compiled(DATABASE.by_code(&code)?.into_iter().next()?)?,
        [id] => {
            id.parse::<phonenumber::country::Id>().ok()?;
            compiled(DATABASE.by_id(*id)?)?
        }
        shared => {
            return shared.iter().find_map(|id| {
                let region = compiled(DATABASE.by_id(*id)?)?;
                let hits = region.hits(national);
                let claims = match region.leading_digits {
                    Some(leading) => hits.set.matched(leading),
                    None => region.kind(&hits) != Type::Unknown,
                };
                claims.then_some((region, hits))
            });
        }
    };
    Some((own, own.hits(national)))
}

/// Regions compiled so far, by calling code and region id. At most one per region of
/// the metadata (about 250), each kept for the life of the process.
type Compiled = HashMap<(u16, &'static str), Option<&'static Region>>;
static COMPILED: LazyLock<RwLock<Compiled>> = LazyLock::new(Default::default);

fn compiled(meta: &'static Metadata) -> Option<&'static Region> {
    let key = (meta.country_code(), meta.id());
    if let Some(found) = COMPILED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return *found;
    }
    let region = Region::compile(meta);
    // Another thread may have compiled it meanwhile: only the copy kept is leaked.
    *COMPILED
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| region.map(|r| &*Box::leak(Box::new(r))))
}

/// One region's patterns, matched in one pass.
struct Region {
    meta: &'static Metadata,
    /// Every pattern below, each anchored at the start of the number.
    patterns: RegexSet,
    leading_digits: Option<usize>,
    general: Pattern,
    /// The kinds tried before fixed line and mobile, in the crate's order.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// Fixed lines and mobiles share one pattern (as in the US).
    fixed_is_mobile: bool,
}

impl Region {
    /// `None` if a pattern does not compile (where the crate would panic).
    fn compile(meta: &'static Metadata) -> Option<Region> {
        let all = meta.descriptors();
        let mut sources = Sources::default();
        let mut special = Vec::new();
        for (kind, descriptor) in [
            (Type::PremiumRate, all.premium_rate()),
            (Type::TollFree, all.toll_free()),
            (Type::SharedCost, all.shared_cost()),
            (Type::Voip, all.voip()),
            (Type::PersonalNumber, all.personal_number()),
            (Type::Pager, all.pager()),
            (Type::Uan, all.uan()),
            (Type::Voicemail, all.voicemail()),
        ] {
            if let Some(descriptor) = descriptor {
                special.push((kind, sources.pattern(descriptor)));
            }
        }
        let source = |d: Option<&'static Descriptor>| d.map(|d| d.national_number().as_str());
        let leading_digits = meta.leading_digits().map(|l| sources.add(l.as_str()));
        let general = sources.pattern(all.general());
        let fixed_line = all.fixed_line().map(|d| sources.pattern(d));
        let mobile = all.mobile().map(|d| sources.pattern(d));
        Some(Region {
            meta,
            patterns: sources.compile()?,
            leading_digits,
            general,
            special,
            fixed_line,
            mobile,
            fixed_is_mobile: source(all.fixed_line()) == source(all.mobile()),
        })
    }

    /// Every pattern of the region matched against the number, in one pass.
    fn hits(&self, national: &str) -> Hits {
        Hits {
            set: self.patterns.matches(national),
            length: national.len(),
        }
    }

    /// `validator::number_type`, from the number's `hits`.
    fn kind(&self, hits: &Hits) -> Type {
        if !hits.fit(&self.general) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self.special.iter().find(|(_, p)| hits.fit(p)) {
            return *kind;
        }
        let mobile = || self.mobile.as_ref().is_some_and(|p| hits.fit(p));
        if self.fixed_line.as_ref().is_some_and(|p| hits.fit(p)) {
            return if self.fixed_is_mobile || mobile() {
                Type::FixedLineOrMobile
            } else {
                Type::FixedLine
            };
        }
        if mobile() {
            Type::Mobile
        } else {
            Type::Unknown
        }
    }
}

/// A descriptor: the lengths a number of its kind may have, and its pattern's place in
/// the region's set.
struct Pattern {
    lengths: Vec<u16>,
    index: usize,
}

/// The patterns of a region being compiled.
#[derive(Default)]
struct Sources(Vec<String>);

impl Sources {
    /// The crate's patterns match where a match starts the number, not only the whole
    /// number: anchored at the start, a set tells the same. (The line break ends any
    /// comment, the patterns being compiled with whitespace and comments ignored.)
    fn add(&mut self, source: &str) -> usize {
        self.0.push(format!("^(?:{source}\n)"));
        self.0.len() - 1
    }

    fn pattern(&mut self, descriptor: &Descriptor) -> Pattern {
        Pattern {
            lengths: descriptor.possible_length().to_vec(),
            index: self.add(descriptor.national_number().as_str()),
        }
    }

    /// With the crate's options, but ASCII digits only: the numbers matched are ASCII
    /// digits, and Unicode's classes made every region's patterns four times the memory.
    fn compile(self) -> Option<RegexSet> {
        RegexSetBuilder::new(self.0)
            .ignore_whitespace(true)
            .unicode(false)
            .build()
            .ok()
    }
}

/// Which of a region's patterns start a number, and the number's length.
struct Hits {
    set: SetMatches,
    length: usize,
}

impl Hits {
    /// `Descriptor::is_match`.
    fn fit(&self, pattern: &Pattern) -> bool {
        let length_fits = pattern.lengths.is_empty()
            || u16::try_from(self.length).is_ok_and(|n| pattern.lengths.contains(&n));
        length_fits && self.set.matched(pattern.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every region's example numbers, and each with a digit more, a digit less and its
    /// last digit changed: valid and invalid numbers of every plan.
    fn numbers() -> Vec<PhoneNumber> {
        let mut numbers = Vec::new();
        for meta in DATABASE.iter() {
            let all = meta.descriptors();
            let examples = [
                Some(all.general()),
                all.fixed_line(),
                all.mobile(),
                all.toll_free(),
                all.premium_rate(),
                all.shared_cost(),
                all.personal_number(),
                all.voip(),
                all.pager(),
                all.uan(),
                all.voicemail(),
            ]
            .into_iter()
            .flatten()
            .filter_map(Descriptor::example);
            for example in examples {
                let last = example.chars().last().unwrap_or('0');
                let changed = if last == '9' { '0' } else { '9' };
                let variants = [
                    example.to_string(),
                    format!("{example}5"),
                    example[..example.len().saturating_sub(1)].to_string(),
                    format!("{}{changed}", &example[..example.len().saturating_sub(1)]),
                ];
                for national in variants {
                    let raw = format!("+{}{national}", meta.country_code());
                    if let Ok(number) = phonenumber::parse(None, &raw) {
                        numbers.push(number);
                    }
                }
            }
        }
        numbers
    }

    #[test]
    fn every_number_gets_the_region_and_kind_the_crate_gives_it() {
        let numbers = numbers();
        assert!(numbers.len() > 3_000, "only {} numbers", numbers.len());
        for number in numbers {
            let ours = classify(&number).map(|(meta, kind)| (meta.id(), kind));
            let crates = number
                .metadata(&DATABASE)
                .map(|meta| (meta.id(), number.number_type(&DATABASE)));
            assert_eq!(ours, crates, "{number:?}");
        }
    }

    #[test]
    fn every_region_of_the_metadata_compiles() {
        for meta in DATABASE.iter() {
            assert!(compiled(meta).is_some(), "{}", meta.id());
        }
    }
}
