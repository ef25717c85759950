//! One integration binary: each test starts a real otpd on a loopback port and talks HTTP.

mod abuse;
mod auth;
mod bad_input;
mod bot;
mod contract;
mod durability;
mod fakes;
mod limits;
mod operability;
mod providers;
mod redis_server;
mod reliability;
mod scale;
mod semantics;
mod support;
