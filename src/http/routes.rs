//! Every route, with its documentation beside it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::Value;

use super::error::ApiError;
use super::openapi::{Answer, Doc, Field, Routes, answer, field};
use super::params::Params;
use super::{AppState, limits, metrics, openapi, otp, status, telegram};
use crate::domain::Channel;

const INVALID: Answer = answer(
    400,
    &["missing_parameter", "invalid_parameter", "invalid_body"],
    "a field is missing or malformed, or the body is neither a JSON object nor form data",
);
const NOT_FOUND: Answer = answer(404, &["not_found"], "no such route or item");

fn doc(path: &str, methods: &'static [&'static str], tag: &'static str, summary: &str) -> Doc {
    Doc {
        path: path.to_owned(),
        methods,
        tag,
        summary: summary.to_owned(),
        fields: Vec::new(),
        answers: Vec::new(),
        open: false,
        plain: None,
        fields_on_get: true,
    }
}

impl Doc {
    fn fields(mut self, fields: Vec<Field>) -> Self {
        self.fields = fields;
        self
    }

    fn answers(mut self, answers: Vec<Answer>) -> Self {
        self.answers = answers;
        self
    }

    fn open(mut self) -> Self {
        self.open = true;
        self
    }

    fn plain(mut self, media: &'static str) -> Self {
        self.plain = Some(media);
        self
    }

    /// GET shows; only POST takes the fields.
    fn fields_for_post_only(mut self) -> Self {
        self.fields_on_get = false;
        self
    }
}

fn target_field(channel: Channel) -> Field {
    match channel {
        Channel::Sms | Channel::Call => field(
            "phone",
            "string",
            true,
            "7 to 15 digits; spaces, dashes, brackets and + are ignored",
        ),
        Channel::Email => field(
            "email",
            "string",
            true,
            "an e-mail address; the domain is lower-cased",
        ),
        Channel::Telegram => field(
            "chat_id",
            "string",
            true,
            "a Telegram chat id (signed 64-bit integer)",
        ),
    }
}

fn create_fields(channel: Channel) -> Vec<Field> {
    let mut fields = vec![
        target_field(channel),
        field(
            "password",
            "string",
            false,
            "the code to send (1 to 64 characters); generated when absent",
        ),
        field(
            "lifetime",
            "integer",
            false,
            "seconds the code lives (default OTP_DEFAULT_LIFETIME, at most OTP_MAX_LIFETIME)",
        ),
        field(
            "ip",
            "string",
            false,
            "the end user's IP address, for per-IP limits (required while IP rules exist)",
        ),
    ];
    match channel {
        Channel::Email => fields.extend([
            field(
                "subject",
                "string",
                false,
                "the subject; {password} is replaced by the code",
            ),
            field(
                "text",
                "string",
                false,
                "the plain-text body; {password} is replaced by the code",
            ),
            field(
                "html",
                "string",
                false,
                "an HTML body sent beside the text; {password} is replaced",
            ),
        ]),
        _ => fields.push(field(
            "message",
            "string",
            false,
            "the message; {password} is replaced by the code",
        )),
    }
    fields
}

fn limit_fields(channel: Channel) -> Vec<Field> {
    let rules = "a list of {\"minutes\", \"rate\"} rules (at most 10); [] clears them";
    vec![
        field("ips", "array", false, rules),
        field(channel.target_limit_key(), "array", false, rules),
    ]
}

fn limit_code(channel: Channel) -> &'static [&'static str] {
    match channel {
        Channel::Sms | Channel::Call => &[
            "ip_limit",
            "phone_limit",
            "daily_cap",
            "pumping_suspected",
            "missing_parameter",
            "invalid_parameter",
            "invalid_body",
        ],
        Channel::Email => &[
            "ip_limit",
            "email_limit",
            "daily_cap",
            "pumping_suspected",
            "missing_parameter",
            "invalid_parameter",
            "invalid_body",
        ],
        Channel::Telegram => &[
            "ip_limit",
            "chat_id_limit",
            "daily_cap",
            "pumping_suspected",
            "missing_parameter",
            "invalid_parameter",
            "invalid_body",
        ],
    }
}

/// The whole API, each route with its documentation.
pub fn routes() -> Routes {
    let mut routes = Routes::default()
        .add(
            doc("/health", &["GET"], "operations", "Whether the process runs").open()
                .answers(vec![answer(200, &[], "{\"status\": true}")]),
            get(status::health),
        )
        .add(
            doc("/ready", &["GET"], "operations", "Whether the store answers").open()
                .answers(vec![answer(200, &[], "{\"status\": true}")]),
            get(status::ready),
        )
        .add(
            doc("/metrics", &["GET"], "operations", "Prometheus metrics (text format)")
                .plain("text/plain")
                .answers(vec![answer(200, &[], "the metrics")]),
            get(metrics::metrics),
        )
        .add(
            doc("/openapi.json", &["GET"], "operations", "This document")
                .plain("application/json")
                .answers(vec![answer(200, &[], "the OpenAPI 3.1 document")]),
            get(|| async { axum::Json(spec().clone()) }),
        )
        .add(
            doc("/docs", &["GET"], "operations", "A page that shows this document, with nothing fetched from elsewhere")
                .plain("text/html")
                .answers(vec![answer(200, &[], "the page")]),
            get(openapi::page),
        )
        .add(
            doc("/deliveries/{id}", &["GET"], "delivery", "How the delivery of a code went: state, attempts, provider, history")
                .answers(vec![answer(200, &[], "content: the job's state (queued, sending, sent, failed, expired), attempts, provider, provider_message_id, error, times and history"), NOT_FOUND]),
            get(status::delivery),
        )
        .add(
            doc(telegram::WEBHOOK_PATH, &["POST"], "telegram", "Telegram's updates for the bot (a Telegram Update object)")
                .open()
                .answers(vec![
                    answer(200, &[], "the update was taken (whatever it holds)"),
                    answer(400, &["invalid_body"], "not a Telegram Update"),
                    answer(401, &["unauthorized"], "X-Telegram-Bot-Api-Secret-Token does not match TELEGRAM_WEBHOOK_SECRET"),
                    answer(404, &["not_found"], "the bot is off, polls, or has no TELEGRAM_BOT_TOKEN"),
                    answer(413, &["payload_too_large"], "the update is larger than 1 MiB"),
                    answer(500, &["internal"], "the update could not be recorded; Telegram sends it again"),
                    answer(503, &["store_unavailable"], "the update could not be recorded; Telegram sends it again"),
                ]),
            post(telegram::webhook),
        )
        .add(
            doc("/target", &["GET", "POST"], "telegram", "Trade a code the bot sent for the chat id it went to (once)")
                .fields(vec![
                    field("password", "string", true, "the code the user typed"),
                    field("channel", "string", false, "telegram (the only one)"),
                    field("ip", "string", false, "the end user's IP address; wrong codes are limited per ip"),
                ])
                .answers(vec![
                    answer(200, &[], "content: {\"target\": \"<chat_id>\"}"),
                    answer(200, &["invalid_password"], "no live code has these digits"),
                    answer(400, &["ip_limit", "missing_parameter", "invalid_parameter", "invalid_body"], "too many wrong codes from this ip (Retry-After), or a bad field"),
                ]),
            get(telegram::target).post(telegram::target),
        );
    for ch in Channel::ALL {
        let check = move |s: State<AppState>, p: Params| otp::check(s, ch, p);
        let show_limits = move |s: State<AppState>| limits::show(s, ch);
        routes = routes
            .add(
                doc(&format!("/{ch}"), &["POST"], "codes", &format!("Create a code and send it by {ch}. With an Idempotency-Key header, a repeat within 24 hours gets the first answer again (Idempotent-Replayed: true) and sends nothing"))
                    .fields(create_fields(ch))
                    .answers(vec![
                        answer(200, &[], "content: {\"id\": delivery id, \"expires_at\": RFC 3339}"),
                        answer(400, limit_code(ch), "a limit, the resend cooldown or the daily cap is reached (Retry-After), the pumping detector holds the country or ip back, ip is missing while IP rules exist, or a field is missing or malformed (a phone of a refused kind or country too)"),
                        answer(409, &["idempotency_conflict", "idempotency_in_progress"], "the Idempotency-Key was used for another request, or its first request is still running (Retry-After)"),
                    ]),
                post(move |s: State<AppState>, h: HeaderMap, p: Result<Params, ApiError>| otp::create(s, ch, h, p)),
            )
            .add(
                doc(&format!("/{ch}/check"), &["GET", "POST"], "codes", &format!("Check a code sent by {ch}; a right one is spent"))
                    .fields(vec![target_field(ch), field("password", "string", true, "the code the user typed"), field("ip", "string", false, "the end user's IP, as given on the send: pairs the check with the sends from that IP for the pumping detector")])
                    .answers(vec![
                        answer(200, &[], "{\"status\": true}: the code was right, and is now spent"),
                        answer(200, &["invalid_password", "attempts_exceeded"], "wrong, expired, spent or unknown; or too many wrong guesses until the next send"),
                        INVALID,
                    ]),
                get(check).post(check),
            )
            .add(
                doc(&format!("/limit/{ch}"), &["GET", "POST"], "limits", &format!("Show (GET) or replace (POST) the send limits of {ch}"))
                    .fields(limit_fields(ch))
                    .fields_for_post_only()
                    .answers(vec![
                        answer(200, &[], "content: the rules in force, {\"ips\": [...], target key: [...]}"),
                        INVALID,
                    ]),
                get(show_limits).post(move |s: State<AppState>, p: Params| limits::update(s, ch, p)),
            );
    }
    routes
}

/// The OpenAPI document of `routes()`, built once.
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| routes().finish().1)
}

/// The route pattern `path` falls under (`/deliveries/{id}` for `/deliveries/abc`), for
/// logs and metrics, which must never carry the path itself.
pub fn route_of(path: &str) -> Option<&'static str> {
    static PATTERNS: OnceLock<Vec<String>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| routes().paths());
    // Runs on every request: compared segment by segment, without allocating.
    let matches = |pattern: &str| {
        let mut parts = pattern.split('/');
        let mut segments = path.split('/');
        loop {
            match (parts.next(), segments.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if p == s || (p.starts_with('{') && !s.is_empty()) => {}
                _ => return false,
            }
        }
    };
    // Most requests are to a fixed path: a plain comparison finds those first.
    patterns
        .iter()
        .find(|pattern| pattern.as_str() == path)
        .or_else(|| patterns.iter().find(|pattern| matches(pattern)))
        .map(String::as_str)
}
