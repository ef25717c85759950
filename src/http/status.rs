//! `GET /health`, `GET /ready` and `GET /deliveries/{id}`.

use axum::extract::rejection::PathRejection;
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
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    const UNKNOWN: ApiError = ApiError::NotFound("no delivery has this id");
    // A path that is not even valid UTF-8 names no delivery either.
    let Ok(Path(id)) = id else {
        return Err(UNKNOWN);
    };
    let id: DeliveryId = id.parse().map_err(|()| UNKNOWN)?;
    let status = app.store.delivery(id).await?.ok_or(UNKNOWN)?;
    Ok(error::ok_with(status))
}
