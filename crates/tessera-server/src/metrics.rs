//! Prometheus metrics: the engine's counters (read at scrape time, including each rank's
//! collective time per step, which the engine samples every step) and the latency
//! histograms the server measures itself (time to first token, inter-token latency).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tessera_engine::{EngineStats, FinishReason, Histogram};

/// Bucket bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// Bucket bounds (seconds) of the inter-token latency histogram.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0,
];

/// Writes `h` as a Prometheus histogram named `name`.
fn render_histogram(out: &mut String, h: &Histogram, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    render_series(out, name, "", h.bounds, &h.counts, h.sum);
}

/// The sample lines of one histogram series: `labels` (empty, or `key="value"` pairs each
/// followed by a comma) go before `le`; `counts` per bucket, not cumulative, the last `+Inf`.
fn render_series(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
) {
    let mut cumulative = 0;
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += counts[i];
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(
        out,
        "{name}_sum{braces} {sum}\n{name}_count{braces} {total}"
    );
}

/// Each rank's collective seconds of the last step (a gauge) and per step (a histogram).
fn render_collective_steps(out: &mut String, stats: &EngineStats) {
    let name = "tessera_collective_last_step_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Seconds each rank spent inside collectives (all-reduce, all-gather) in the last engine step.\n# TYPE {name} gauge"
    );
    for (rank, secs) in stats.collective_last_step_seconds.iter().enumerate() {
        let _ = writeln!(out, "{name}{{rank=\"{rank}\"}} {secs}");
    }
    let name = "tessera_collective_step_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Seconds each rank spent inside collectives per engine step.\n# TYPE {name} histogram"
    );
    for (rank, h) in stats.collective_step_seconds.iter().enumerate() {
        let labels = format!("rank=\"{rank}\",");
        render_series(out, name, &labels, h.bounds, &h.counts, h.sum);
    }
}

/// What the server measures, shared by every request task.
#[derive(Debug)]
pub struct Metrics {
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    finished: [AtomicU64; 4],
    rejected_full: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            ttft: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            itl: Mutex::new(Histogram::new(ITL_BUCKETS)),
            finished: Default::default(),
            rejected_full: AtomicU64::new(0),
        }
    }
}

const REASONS: [(FinishReason, &str); 4] = [
    (FinishReason::Stop, "stop"),
    (FinishReason::Length, "length"),
    (FinishReason::Cancelled, "cancelled"),
    (FinishReason::Error, "error"),
];

impl Metrics {
    /// Records the time from a request's arrival to its first token.
    pub fn observe_ttft(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    /// Records the time between two tokens of one choice.
    pub fn observe_itl(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    /// Counts a finished engine request.
    pub fn count_finished(&self, reason: FinishReason) {
        if let Some(i) = REASONS.iter().position(|(r, _)| *r == reason) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request refused because the queue was full.
    pub fn count_rejected_full(&self) {
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything, with `stats` from the engine.
    pub fn render(&self, stats: &EngineStats) -> String {
        let mut out = String::new();
        render_engine_stats(&mut out, stats);
        render_collective_steps(&mut out, stats);
        counter(
            &mut out,
            "tessera_requests_rejected_queue_full_total",
            "Requests refused with 429 because the queue was full.",
            self.rejected_full.load(Ordering::Relaxed),
        );
        let name = "tessera_requests_finished_total";
        let _ = writeln!(
            out,
            "# HELP {name} Engine requests (choices) finished, by reason.\n# TYPE {name} counter"
        );
        for (i, (_, label)) in REASONS.iter().enumerate() {
            let v = self.finished[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{label}\"}} {v}");
        }
        render_histogram(
            &mut out,
            &lock(&self.ttft),
            "tessera_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
        );
        render_histogram(
            &mut out,
            &lock(&self.itl),
            "tessera_inter_token_latency_seconds",
            "Time between consecutive tokens of one choice.",
        );
        out
    }
}

/// Writes one gauge.
fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Writes one counter.
fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// Writes the engine's gauges and counters, then its per-rank collective totals.
fn render_engine_stats(out: &mut String, stats: &EngineStats) {
    let hit_rate = if stats.prefix_queries == 0 {
        0.0
    } else {
        stats.prefix_hits as f64 / stats.prefix_queries as f64
    };
    let gauges = [
        (
            "tessera_requests_running",
            "Requests being computed.",
            stats.running as f64,
        ),
        (
            "tessera_requests_waiting",
            "Requests waiting for KV blocks or a batch slot.",
            stats.waiting as f64,
        ),
        (
            "tessera_kv_blocks_used",
            "KV-cache blocks held by requests.",
            stats.blocks_used as f64,
        ),
        (
            "tessera_kv_blocks_total",
            "KV-cache blocks in the pool.",
            stats.blocks_total as f64,
        ),
        (
            "tessera_prefix_cache_hit_rate",
            "Prefix-cache block hits over lookups since start.",
            hit_rate,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(out, name, help, v);
    }
    let counters = [
        (
            "tessera_generated_tokens_total",
            "Tokens generated since start.",
            stats.generated_tokens,
        ),
        (
            "tessera_prompt_tokens_computed_total",
            "Prompt tokens computed since start (prefix-cache hits excluded).",
            stats.computed_prompt_tokens,
        ),
        (
            "tessera_preemptions_total",
            "Requests preempted (recomputed later) since start.",
            stats.preemptions,
        ),
        (
            "tessera_steps_total",
            "Engine forward steps since start.",
            stats.steps,
        ),
    ];
    for (name, help, v) in counters {
        counter(out, name, help, v);
    }
    let _ = writeln!(
        out,
        "# HELP tessera_collective_seconds_total Seconds each rank spent inside collectives (all-reduce, all-gather) since start.\n# TYPE tessera_collective_seconds_total counter"
    );
    for (rank, secs) in stats.collective_seconds.iter().enumerate() {
        let _ = writeln!(
            out,
            "tessera_collective_seconds_total{{rank=\"{rank}\"}} {secs}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP tessera_collective_bytes_total Bytes each rank wrote into the communicator since start.\n# TYPE tessera_collective_bytes_total counter"
    );
    for (rank, bytes) in stats.collective_bytes.iter().enumerate() {
        let _ = writeln!(
            out,
            "tessera_collective_bytes_total{{rank=\"{rank}\"}} {bytes}"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let m = Metrics::default();
        m.observe_ttft(Duration::from_millis(3));
        m.observe_ttft(Duration::from_millis(30));
        m.observe_ttft(Duration::from_secs(100));
        let text = m.render(&EngineStats::default());
        assert!(text.contains("tessera_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("tessera_time_to_first_token_seconds_bucket{le=\"0.04\"} 2\n"));
        assert!(text.contains("tessera_time_to_first_token_seconds_bucket{le=\"80\"} 2\n"));
        assert!(text.contains("tessera_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("tessera_time_to_first_token_seconds_count 3\n"));
    }

    fn step_histogram(seconds: &[f64]) -> Histogram {
        let mut h = Histogram::default();
        for &s in seconds {
            h.observe(s);
        }
        h
    }

    #[test]
    fn engine_gauges_and_hit_rate_are_exported() {
        let stats = EngineStats {
            running: 2,
            blocks_used: 7,
            blocks_total: 100,
            prefix_queries: 4,
            prefix_hits: 1,
            generated_tokens: 42,
            collective_seconds: vec![0.5, 0.25],
            collective_bytes: vec![1024, 1024],
            collective_last_step_seconds: vec![0.002, 0.0005],
            collective_step_seconds: vec![
                step_histogram(&[0.002, 0.003]),
                step_histogram(&[0.0005]),
            ],
            ..EngineStats::default()
        };
        let text = Metrics::default().render(&stats);
        for line in [
            "tessera_collective_seconds_total{rank=\"0\"} 0.5\n",
            "tessera_collective_seconds_total{rank=\"1\"} 0.25\n",
            "tessera_collective_bytes_total{rank=\"1\"} 1024\n",
            "tessera_requests_running 2\n",
            "tessera_requests_waiting 0\n",
            "tessera_kv_blocks_used 7\n",
            "tessera_kv_blocks_total 100\n",
            "tessera_prefix_cache_hit_rate 0.25\n",
            "tessera_generated_tokens_total 42\n",
            "tessera_collective_last_step_seconds{rank=\"0\"} 0.002\n",
            "tessera_collective_last_step_seconds{rank=\"1\"} 0.0005\n",
            "tessera_collective_step_seconds_bucket{rank=\"0\",le=\"0.001\"} 0\n",
            "tessera_collective_step_seconds_bucket{rank=\"0\",le=\"0.0025\"} 1\n",
            "tessera_collective_step_seconds_bucket{rank=\"0\",le=\"0.005\"} 2\n",
            "tessera_collective_step_seconds_bucket{rank=\"0\",le=\"+Inf\"} 2\n",
            "tessera_collective_step_seconds_count{rank=\"0\"} 2\n",
            "tessera_collective_step_seconds_sum{rank=\"0\"} 0.005\n",
            "tessera_collective_step_seconds_bucket{rank=\"1\",le=\"0.0005\"} 1\n",
            "tessera_collective_step_seconds_count{rank=\"1\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
