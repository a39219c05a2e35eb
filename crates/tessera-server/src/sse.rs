//! Server-sent events: a [`Generation`]'s events as `data: {json}\n\n` frames, ending with
//! `data: [DONE]`.
//!
//! The endpoint-specific chunk shapes come from a [`ChunkFormat`]. An engine failure
//! mid-stream is sent as one `data: {"error": ...}` frame (the status line is long gone).
//! When the client disconnects, hyper drops the body stream, which drops the
//! `Generation` and so cancels its unfinished choices.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tessera_engine::{Event, TokenLogprobs};
use tracing::Instrument;

use crate::generation::{finish_error, finish_reason_str, Generation};
use crate::response::UsageOut;

/// What a streaming endpoint sends for each event.
pub trait ChunkFormat: Send + 'static {
    /// Frames sent before any token (the assistant role, an echoed prompt).
    fn opening(&mut self) -> Vec<String>;
    /// The frame for one token event of `choice` (`None`: nothing to send).
    fn token(
        &mut self,
        choice: usize,
        id: u32,
        text: String,
        logprobs: Option<&TokenLogprobs>,
    ) -> Option<String>;
    /// The frame for the prompt logprobs of `choice` (`None`: nothing to send); only
    /// requests that ask for them get them.
    fn prompt_logprobs(
        &mut self,
        _choice: usize,
        _scores: Vec<Option<TokenLogprobs>>,
    ) -> Option<String> {
        None
    }
    /// The last frame of `choice`.
    fn finished(&mut self, choice: usize, reason: &'static str) -> String;
    /// The usage frame (only with `stream_options.include_usage`).
    fn usage(&mut self, usage: UsageOut) -> String;
}

/// Serializes `value` as one SSE frame.
pub fn frame<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("data: {json}\n\n"),
        Err(e) => format!("data: {{\"error\": {{\"message\": \"serialization failed: {e}\", \"type\": \"server_error\", \"param\": null, \"code\": null}}}}\n\n"),
    }
}

struct StreamState<F> {
    generation: Generation,
    format: F,
    prompt_tokens: usize,
    completion_tokens: usize,
    include_usage: bool,
    opened: bool,
    done: bool,
}

impl<F: ChunkFormat> StreamState<F> {
    /// The next bytes to send; `None` when the stream is over.
    async fn next_frames(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if !self.opened {
            self.opened = true;
            return Some(self.format.opening().concat());
        }
        loop {
            let Some((choice, event)) = self.generation.next().await else {
                return Some(self.close());
            };
            match event {
                Event::Token { id, text, logprobs } => {
                    if let Some(f) = self.format.token(choice, id, text, logprobs.as_ref()) {
                        return Some(f);
                    }
                }
                Event::PromptLogprobs(scores) => {
                    if let Some(f) = self.format.prompt_logprobs(choice, scores) {
                        return Some(f);
                    }
                }
                Event::Finished {
                    reason,
                    usage,
                    error,
                } => {
                    if let Some(e) = finish_error(reason, error.as_deref()) {
                        tracing::error!(error = %e, "stream ended by the engine");
                        self.done = true;
                        return Some(frame(&e.body()) + "data: [DONE]\n\n");
                    }
                    self.completion_tokens += usage.completion_tokens;
                    return Some(self.format.finished(choice, finish_reason_str(reason)));
                }
            }
        }
    }

    fn close(&mut self) -> String {
        self.done = true;
        let usage = UsageOut::new(self.prompt_tokens, self.completion_tokens);
        tracing::info!(
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            seconds = self.generation.elapsed().as_secs_f64(),
            "stream finished"
        );
        let mut out = String::new();
        if self.include_usage {
            out += &self.format.usage(usage);
        }
        out + "data: [DONE]\n\n"
    }
}

/// The streaming response for `generation`, framed by `format`, inside `span`.
pub fn response<F: ChunkFormat>(
    generation: Generation,
    format: F,
    prompt_tokens: usize,
    include_usage: bool,
    span: tracing::Span,
) -> Response {
    let state = StreamState {
        generation,
        format,
        prompt_tokens,
        completion_tokens: 0,
        include_usage,
        opened: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| {
        let span = span.clone();
        async move {
            let frames = s.next_frames().await?;
            Some((Ok::<_, Infallible>(Bytes::from(frames)), s))
        }
        .instrument(span)
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
