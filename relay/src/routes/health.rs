//! `GET /health` (200, or 503 naming what keeps the relay from working:
//! the database, the LISTEN connection, ticks; see [`crate::liveness`]) and
//! `GET /metrics`.

use super::{AppState, ResBody};
use crate::error::json_response;
use crate::Error;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub async fn health(state: Arc<AppState>) -> Result<Response<ResBody>, Error> {
    let mut problems: Vec<&str> =
        match tokio::time::timeout(Duration::from_secs(3), state.store.ping()).await {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: database unavailable");
                vec!["database unavailable"]
            }
            Err(_) => {
                tracing::warn!("health check: database timed out");
                vec!["database timed out"]
            }
        };
    problems.extend(state.liveness.problems(std::time::Instant::now()));
    if problems.is_empty() {
        Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
    } else {
        Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "problems": problems}),
        ))
    }
}

pub fn metrics(state: &AppState) -> Response<ResBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(state.metrics.render())).boxed())
        .expect("static response parts are valid")
}
