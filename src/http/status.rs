//! `GET /health`, `GET /ready` and `GET /deliveries/{id}`.

use axum::extract::{Path, State};
use axum::response::Response;

use super::AppState;
use super::error::{self, ApiError};
use crate::delivery::DeliveryId;

pub async fn health() -> Response {
    error::ok()
}

pub async fn ready(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.store.ping().await?;
    Ok(error::ok())
}

pub async fn delivery(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    const UNKNOWN: ApiError = ApiError::NotFound("no delivery has this id");
    let id: DeliveryId = id.parse().map_err(|()| UNKNOWN)?;
    let status = app.store.delivery(id).await?.ok_or(UNKNOWN)?;
    Ok(error::ok_with(status))
}
