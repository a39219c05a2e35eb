//! The small endpoints (`/health`, `/metrics`, `/v1/models`), the fallbacks, and the
//! middleware every request passes: a request id with its tracing span, and the API key.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::Instrument;

use crate::error::ServerError;
use crate::json_response;
use crate::state::AppState;

/// A request's id: the client's `x-request-id` when it sent a sane one, else a fresh one.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A fresh random-looking id (hex), unique within the process.
pub(crate) fn fresh_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{:016x}{:04x}", h.finish(), n & 0xffff)
}

/// Gives each request an id and a span; echoes the id in `x-request-id`.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(fresh_id, str::to_string);
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "responded"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Requires `Authorization: Bearer <key>` when the server has an API key.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let sent = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !sent.is_some_and(|s| constant_time_eq(s.as_bytes(), key.as_bytes())) {
            return ServerError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /health`: 200 while the engine can serve, 503 otherwise.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.is_healthy() {
        (StatusCode::OK, "ok").into_response()
    } else {
        ServerError::Unavailable("The engine is not serving.".into()).into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// One entry of `/v1/models`.
#[derive(Serialize)]
struct ModelCard {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    max_model_len: usize,
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelCard>,
}

fn card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.config.model_name.clone(),
        object: "model",
        created: state.started,
        owned_by: "tessera",
        max_model_len: state.config.max_model_len,
    }
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let list = ModelList {
        object: "list",
        data: vec![card(&state)],
    };
    json_response(StatusCode::OK, &list)
}

/// `GET /v1/models/{model}`.
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ServerError> {
    state.check_model(&model)?;
    Ok(json_response(StatusCode::OK, &card(&state)))
}

/// Unknown paths.
pub async fn not_found(uri: Uri) -> ServerError {
    ServerError::UnknownEndpoint(uri.path().to_string())
}

/// Known paths with the wrong method.
pub async fn method_not_allowed(method: Method) -> ServerError {
    ServerError::MethodNotAllowed(method.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_keys() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(fresh_id(), fresh_id());
    }
}
