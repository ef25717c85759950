//! One integration binary: each test starts a real otpd on a loopback port and talks HTTP.

mod auth;
mod bad_input;
mod bot;
mod contract;
mod durability;
mod fakes;
mod limits;
mod providers;
mod reliability;
mod semantics;
mod support;
