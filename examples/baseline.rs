//! The benchmark's ceiling: the smallest axum service that does what every otpd request
//! does at the edge (read a JSON body, answer the envelope), and nothing else. It also
//! serves as the loopback sink the delivery benchmark posts to.
//!
//!     cargo run --release --example baseline -- 127.0.0.1:9001

use axum::Router;
use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::any;

async fn answer(body: Bytes) -> impl IntoResponse {
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    std::hint::black_box(parsed);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":true}"#,
    )
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let app = Router::new().fallback(any(answer));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("baseline: {e}");
    }
}
