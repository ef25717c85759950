//! `GET /metrics` in the Prometheus text format. No label ever carries a target or a
//! code.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut text = String::new();
    counter(
        &mut text,
        "otpd_target_lookup_failures_total",
        "Wrong or expired codes given to /target since start (a rise is someone guessing).",
        app.link.failed_lookups(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}
