//! Stand-ins for the outside services otpd talks to (an HTTP provider API and
//! an SMTP relay), so tests can see exactly what otpd sent and script how the
//! other side answers, all over real loopback sockets.

// Not every test module uses every helper; unused ones must not fail the build.
#![allow(dead_code)]

pub mod http;
pub mod smtp;
pub mod telegram;
