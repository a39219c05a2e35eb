//! The one response path of both endpoints: a [`Generation`] answered as server-sent
//! events or as one JSON body, in the endpoint's shapes ([`Respond`]).

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use tracing::Instrument;

use crate::error::ServerError;
use crate::generation::Generation;
use crate::json_response;
use crate::response::ChoiceOutput;
use crate::sse::{self, ChunkFormat};

/// An endpoint's response shapes: its stream chunks ([`ChunkFormat`]) and its whole body.
pub trait Respond: ChunkFormat {
    /// The non-streaming response body.
    type Body: Serialize;
    /// The whole body from every choice's output (an engine failure is an error).
    fn whole(
        &self,
        outputs: Vec<ChoiceOutput>,
        prompt_tokens: usize,
    ) -> Result<Self::Body, ServerError>;
}

/// How a request asked to be answered.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Prompt tokens of the request (every prompt once).
    pub prompt_tokens: usize,
    /// Server-sent events instead of one body.
    pub stream: bool,
    /// With `stream`: a last chunk with the usage of the whole request.
    pub include_usage: bool,
}

/// Answers `generation` in `format`'s shapes, streamed or whole, inside `span`.
pub async fn respond<F: Respond>(
    generation: Generation,
    format: F,
    shape: Shape,
    span: tracing::Span,
) -> Result<Response, ServerError> {
    if shape.stream {
        return Ok(sse::response(
            generation,
            format,
            shape.prompt_tokens,
            shape.include_usage,
            span,
        ));
    }
    let outputs = crate::collect(generation).instrument(span).await;
    let body = format.whole(outputs, shape.prompt_tokens)?;
    Ok(json_response(StatusCode::OK, &body))
}
