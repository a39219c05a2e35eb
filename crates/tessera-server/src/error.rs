//! The server's one error type: every way a request (or start-up) can fail, each mapped
//! to an HTTP status and an OpenAI-shaped body `{"error": {message, type, param, code}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

/// Everything that can go wrong in the server, worded for the client that sent the request.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The request is malformed or a parameter is out of range (400).
    #[error("{message}")]
    InvalidRequest {
        /// What was wrong and what to do.
        message: String,
        /// The offending parameter, as the request spells it.
        param: Option<String>,
        /// A machine-readable code, when OpenAI has one.
        code: Option<&'static str>,
    },
    /// The request names a model this server does not serve (404).
    #[error("The model `{requested}` does not exist; this server serves `{served}`.")]
    ModelNotFound {
        /// The name the request sent.
        requested: String,
        /// The one name this server answers to.
        served: String,
    },
    /// No route at this path (404).
    #[error("Unknown endpoint {0}; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions.")]
    UnknownEndpoint(String),
    /// The route exists but not with this method (405).
    #[error("Method {0} is not allowed on this endpoint.")]
    MethodNotAllowed(String),
    /// Missing or wrong API key (401).
    #[error("Missing or incorrect API key: send `Authorization: Bearer <key>` with the key given to `tessera serve --api-key`.")]
    Unauthorized,
    /// The body is larger than the limit (413).
    #[error("The request body is larger than {limit} bytes; send a shorter prompt.")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Too many requests are in the engine already (429).
    #[error("The server is at capacity ({limit} requests in the engine); retry shortly.")]
    QueueFull {
        /// `--max-queue`.
        limit: usize,
    },
    /// The server is shutting down or the engine stopped (503).
    #[error("{0}")]
    Unavailable(String),
    /// The engine failed while running the request (500).
    #[error("The engine failed: {0}")]
    Engine(String),
    /// Binding the listening socket failed (start-up).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Building the async runtime or serving failed (start-up).
    #[error("server I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// A 400 about parameter `param`.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } | Self::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Engine(_) | Self::Bind { .. } | Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ModelNotFound { .. }
            | Self::UnknownEndpoint(_)
            | Self::MethodNotAllowed(_)
            | Self::BodyTooLarge { .. } => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::QueueFull { .. } => "rate_limit_error",
            Self::Unavailable(_) | Self::Engine(_) | Self::Bind { .. } | Self::Io(_) => {
                "server_error"
            }
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { code, .. } => *code,
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::Unauthorized => Some("invalid_api_key"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::QueueFull { .. } => Some("rate_limit_exceeded"),
            _ => None,
        }
    }

    /// The OpenAI error object (what goes under `"error"`).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param().map(str::to_string),
                code: self.code(),
            },
        }
    }
}

/// `{"error": {...}}`, OpenAI's error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields of an OpenAI error.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// What went wrong.
    pub message: String,
    /// The error class.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending parameter.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = crate::json_response(status, &self.body());
        let headers = response.headers_mut();
        match self {
            Self::QueueFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
