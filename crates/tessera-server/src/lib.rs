//! An OpenAI-compatible HTTP server over the serving engine (`tessera serve`).
//!
//! Requests flow one way: HTTP body -> typed request (`request`) -> checked sampling
//! parameters (`params`) -> engine requests, one per choice (`generation`) -> a whole
//! JSON response or server-sent events (`sse`). The server never touches ranks or the
//! KV cache: it holds an [`EngineHandle`] and a tokenizer.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /health`, `GET /metrics`. Errors are OpenAI-shaped ([`ServerError`]). A client
//! that disconnects cancels its request; a shutdown signal stops accepting, lets
//! in-flight requests finish up to a timeout, then returns.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod chat;
mod completions;
mod conversation;
pub mod error;
mod generation;
mod metrics;
mod params;
mod request;
mod respond;
mod response;
mod routes;
mod sse;
mod state;
mod structured;
mod tools;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Router};
use serde::Serialize;
use tessera_engine::{EngineHandle, Event};
use tessera_model::TextTokenizer;
use tokio::net::TcpListener;

pub use error::ServerError;
pub use params::SamplingDefaults;
pub use routes::RequestId;
pub use state::{AppState, ServerConfig};

use generation::Generation;
use response::ChoiceOutput;

/// The HTTP routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{model}", get(routes::get_model))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::require_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn(routes::request_id))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains: no new
/// connections, in-flight requests finish for up to `config.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let timeout = state.config.shutdown_timeout;
    let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
    let drain_state = Arc::clone(&state);
    let signal = async move {
        shutdown.await;
        tracing::info!(
            timeout_s = timeout.as_secs_f64(),
            "shutting down: finishing in-flight requests"
        );
        drain_state.mark_unhealthy();
        let _ = signalled_tx.send(true);
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let deadline = async move {
        let _ = signalled_rx.wait_for(|s| *s).await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!("shutdown timeout reached: dropping the requests still running"),
    }
    Ok(())
}

/// Binds `config.host:config.port`, calls `on_ready` with the bound address, and serves
/// until SIGTERM or Ctrl-C, then drains and stops the engine. Blocks the calling thread.
pub fn run(
    engine: EngineHandle,
    tokenizer: Arc<TextTokenizer>,
    config: ServerConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tessera-http")
        .build()?;
    let addr = format!("{}:{}", config.host, config.port);
    let state = Arc::new(AppState::new(engine.clone(), tokenizer, config));
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr()?;
        tracing::info!(%local, "listening");
        on_ready(local);
        serve(listener, state, shutdown_signal()).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    engine.shutdown();
    served
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM (also used by the batch runner).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A JSON response with `status`.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(b) => (status, b),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":{{\"message\":\"serialization failed: {e}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}").into_bytes(),
        ),
    };
    let mut response = Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs every choice of `generation` to its end (non-streaming responses).
pub(crate) async fn collect(mut generation: Generation) -> Vec<ChoiceOutput> {
    let mut outputs = vec![ChoiceOutput::default(); generation.len()];
    while let Some((i, event)) = generation.next().await {
        match event {
            Event::Token { id, text, logprobs } => outputs[i].push_token(id, &text, logprobs),
            Event::PromptLogprobs(scores) => outputs[i].prompt_logprobs = Some(scores),
            Event::Finished {
                reason,
                usage,
                error,
            } => {
                outputs[i].finish = Some(reason);
                outputs[i].usage = usage;
                outputs[i].error = error;
            }
        }
    }
    tracing::info!(
        completion_tokens = outputs
            .iter()
            .map(|o| o.usage.completion_tokens)
            .sum::<usize>(),
        seconds = generation.elapsed().as_secs_f64(),
        "finished"
    );
    outputs
}
