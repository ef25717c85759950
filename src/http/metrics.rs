//! `GET /metrics` in the Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::Gauge;

pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut gauges = Vec::new();
    // The outbox is read at scrape time; a store that does not answer leaves the gauges
    // out rather than failing the scrape.
    match app.store.outbox_stats().await {
        Ok(stats) => {
            let now = app.clock.now();
            for s in stats {
                let channel = vec![("channel", s.channel.as_str().to_owned())];
                gauges.push(Gauge {
                    name: "otpd_delivery_queue_depth",
                    labels: channel.clone(),
                    value: s.depth as f64,
                });
                let age = s
                    .oldest_created_at
                    .map(|t| (now.millis() - t.millis()).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                gauges.push(Gauge {
                    name: "otpd_delivery_oldest_job_age_seconds",
                    labels: channel,
                    value: age,
                });
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the outbox for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&gauges),
    )
        .into_response()
}
