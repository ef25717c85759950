//! Request parameters from arbitrary bytes: the parser and the field readers must refuse
//! or accept, never panic. `cargo +nightly fuzz run params -- -max_total_time=60`.
//! Input: a flag byte (bit 0: the body is declared a form), the query string, a zero
//! byte, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpd::domain::Channel;
use otpd::domain::target::Target;
use otpd::http::params::Params;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[][..], rest),
    };
    let query = std::str::from_utf8(query).ok();
    let Ok(params) = Params::parse(query, flag & 1 == 1, body) else {
        return;
    };
    let _ = params.canonical();
    for name in ["password", "lifetime", "ip", "message", "subject", "text", "html"] {
        let _ = params.text(name);
        let _ = params.integer(name);
        let _ = params.structured(name);
    }
    for channel in Channel::ALL {
        if let Ok(Some(raw)) = params.text_or_number(channel.target_field()) {
            if let Ok(target) = Target::parse(channel, &raw) {
                // A normalised target reads back as itself.
                let key = target.key();
                let again = Target::parse(channel, &key).map(|t| t.key());
                assert_eq!(again.as_deref(), Ok(key.as_str()), "{channel:?} {raw:?}");
            }
        }
    }
});
