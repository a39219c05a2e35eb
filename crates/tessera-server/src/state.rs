//! What every request handler shares: the engine, the tokenizer, the configuration, the
//! metrics and the count of requests in the engine (the queue that `--max-queue` bounds).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_engine::constraint::ConstraintCompiler;
use tessera_engine::EngineHandle;
use tessera_model::TextTokenizer;

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::params::Limits;

/// How the server runs; built by the CLI from its flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind (loopback by default in the CLI).
    pub host: String,
    /// Port to bind; 0 picks a free one (reported to `on_ready`).
    pub port: u16,
    /// The one model name requests must use (the model directory's name).
    pub model_name: String,
    /// Most tokens (prompt + completion) of one request: the model's context, capped by
    /// what the KV cache can hold for a request alone.
    pub max_model_len: usize,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Most engine requests (choices) in flight; more are answered 429.
    pub max_queue: usize,
    /// Most completions per prompt (`n`).
    pub max_n: usize,
    /// Most prompts in one text-completion request.
    pub max_prompts: usize,
    /// Largest request body in bytes (413 above).
    pub body_limit: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Reported as `system_fingerprint` (version and sharding).
    pub system_fingerprint: String,
    /// Sampling defaults for fields a request leaves out (the model's
    /// `generation_config.json`).
    pub sampling_defaults: crate::params::SamplingDefaults,
}

impl ServerConfig {
    /// A configuration with the defaults of `tessera serve` for `model_name`.
    pub fn new(model_name: impl Into<String>, max_model_len: usize) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            model_name: model_name.into(),
            max_model_len,
            api_key: None,
            max_queue: 256,
            max_n: 8,
            max_prompts: 64,
            body_limit: 4 << 20,
            shutdown_timeout: Duration::from_secs(30),
            system_fingerprint: format!("tessera-{}", env!("CARGO_PKG_VERSION")),
            sampling_defaults: crate::params::SamplingDefaults::default(),
        }
    }
}

/// The state behind every handler.
pub struct AppState {
    /// The serving engine.
    pub engine: EngineHandle,
    /// The model's tokenizer and chat template.
    pub tokenizer: Arc<TextTokenizer>,
    /// Configuration.
    pub config: ServerConfig,
    /// Latency histograms and counters.
    pub metrics: Metrics,
    /// Unix time the server started (the model's `created`).
    pub started: u64,
    /// Compiles grammars for constrained decoding (the reason, when the vocabulary
    /// cannot be read as a token trie).
    pub constraints: Result<Arc<ConstraintCompiler>, String>,
    in_engine: AtomicUsize,
    healthy: AtomicBool,
}

impl AppState {
    /// State over a started engine.
    pub fn new(engine: EngineHandle, tokenizer: Arc<TextTokenizer>, config: ServerConfig) -> Self {
        let constraints = tokenizer
            .to_json()
            .map_err(|e| e.to_string())
            .and_then(|json| {
                ConstraintCompiler::new(&json, engine.vocab(), engine.default_stop_ids())
                    .map_err(|e| e.to_string())
            })
            .map(Arc::new);
        if let Err(e) = &constraints {
            tracing::warn!(error = %e, "constrained decoding is unavailable");
        }
        Self {
            constraints,
            engine,
            tokenizer,
            config,
            metrics: Metrics::default(),
            started: unix_now(),
            in_engine: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            vocab: self.engine.vocab(),
            max_model_len: self.config.max_model_len,
            max_n: self.config.max_n,
        }
    }

    /// Refuses any model name but the served one.
    pub fn check_model(&self, requested: &str) -> Result<(), ServerError> {
        if requested == self.config.model_name {
            Ok(())
        } else {
            Err(ServerError::ModelNotFound {
                requested: requested.to_string(),
                served: self.config.model_name.clone(),
            })
        }
    }

    /// Refuses (400) a request of `choices` engine requests that could never fit the queue.
    pub fn check_capacity(&self, choices: usize) -> Result<(), ServerError> {
        if choices <= self.config.max_queue {
            return Ok(());
        }
        Err(ServerError::invalid(
            Some("n".to_string()),
            format!(
                "This request needs {choices} choices but the server runs at most {} at once \
                 (--max-queue); lower n or send fewer prompts.",
                self.config.max_queue
            ),
        ))
    }

    /// Takes `k` queue slots, or refuses with 429 when fewer are free.
    pub fn reserve(&self, k: usize) -> Result<(), ServerError> {
        let limit = self.config.max_queue;
        let taken = self
            .in_engine
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + k <= limit).then_some(cur + k)
            });
        taken.map(|_| ()).map_err(|_| {
            self.metrics.count_rejected_full();
            ServerError::QueueFull { limit }
        })
    }

    /// Gives back `k` queue slots.
    pub fn release(&self, k: usize) {
        self.in_engine.fetch_sub(k, Ordering::AcqRel);
    }

    /// Whether the engine is believed to be able to serve.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the engine as unable to serve (a rank died, or shutdown began).
    pub fn mark_unhealthy(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
