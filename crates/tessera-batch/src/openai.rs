//! OpenAI Batch API lines, answered by the HTTP server's own routes called in-process, so
//! parsing, validation, sampling and response bodies are exactly those of `tessera serve`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tessera_server::AppState;
use tower::ServiceExt;

/// What one batch request got back from its endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointReply {
    /// HTTP status.
    pub status: u16,
    /// The server's request id.
    pub request_id: String,
    /// The JSON body (an OpenAI error object when the status is not 2xx).
    pub body: Value,
}

impl EndpointReply {
    /// The `response` object of a Batch API output line.
    pub fn response_json(&self) -> Value {
        json!({
            "status_code": self.status,
            "request_id": self.request_id,
            "body": self.body,
        })
    }

    /// The error message of a failed request.
    pub fn error_message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(|| format!("HTTP {}", self.status), str::to_string)
    }
}

/// Calls the server's routes without a socket.
pub struct Endpoints {
    router: Router,
    model_name: String,
}

impl Endpoints {
    /// Routes over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        let model_name = state.config.model_name.clone();
        Self {
            router: tessera_server::router(state),
            model_name,
        }
    }

    /// POSTs `body` to `url`; a body without `model` gets the served model's name.
    pub async fn call(&self, url: &str, mut body: Value) -> EndpointReply {
        if let Value::Object(map) = &mut body {
            map.entry("model")
                .or_insert_with(|| Value::String(self.model_name.clone()));
        }
        let request = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return internal(format!("cannot build the request: {e}")),
        };
        let Ok(response) = self.router.clone().oneshot(request).await;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return internal(format!("cannot read the response: {e}")),
        };
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        EndpointReply {
            status,
            request_id,
            body,
        }
    }
}

fn internal(message: String) -> EndpointReply {
    EndpointReply {
        status: 500,
        request_id: String::new(),
        body: json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}),
    }
}
