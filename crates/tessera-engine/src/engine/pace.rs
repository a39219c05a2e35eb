//! Steady token pace: how many prefill tokens a step may carry while decodes run.
//!
//! The engine measures every step's wall time and fits, online, a linear cost model
//!
//! ```text
//! step seconds ≈ fixed + per_prefill_token × prefill tokens + per_decode_row × decode rows
//! ```
//!
//! (exponentially weighted least squares, so it follows the machine's load). A step that
//! decodes `d` sequences, while the queue would run `b` together, gets a prefill budget of
//!
//! ```text
//! (target − fixed − per_decode_row × d) / per_prefill_token     (at least MIN_PREFILL_TOKENS)
//! ```
//!
//! where the target inter-token time is `--max-itl-ms` when set, else (`auto`)
//! [`AUTO_ITL_FACTOR`] × the predicted decode-only step of `b` sequences: the pace the
//! running requests get anyway once the queue is admitted, so waiting prompts still
//! enter quickly under load while a decode step never waits behind a whole prefill chunk.
//! Until the model has seen enough steps, prefill takes the whole step budget.

use std::time::Duration;

use crate::scheduler::StepShape;

/// The auto target is this many times the predicted decode-only step of the queue's batch:
/// 1.5 leaves a third of margin for prediction error and machine noise under the goal
/// that the slowest inter-token times stay within twice the median.
pub const AUTO_ITL_FACTOR: f64 = 1.5;

/// Fewest prefill tokens a step with decodes may carry, so waiting prompts always advance
/// even when the target cannot be met.
pub const MIN_PREFILL_TOKENS: usize = 16;

/// Weight of the previous fit against one new step (about a 30-step memory).
const DECAY: f64 = 0.97;

/// Steps the fit needs before it is used.
const MIN_SAMPLES: u64 = 4;

/// The inter-token time the engine aims for while prompts are being prefilled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ItlTarget {
    /// [`AUTO_ITL_FACTOR`] × the predicted decode-only step of the queue's batch.
    #[default]
    Auto,
    /// At most this long per step while decodes run.
    Max(Duration),
    /// No pacing: prefill always takes the whole step budget.
    Off,
}

impl std::str::FromStr for ItlTarget {
    type Err = String;

    /// Parses `auto`, `off` or a number of milliseconds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            ms => match ms.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => {
                    Ok(Self::Max(Duration::from_secs_f64(v / 1e3)))
                }
                _ => Err(format!(
                    "expected `auto`, `off` or a positive number of milliseconds, got `{ms}`"
                )),
            },
        }
    }
}

/// Step-time model fitted online: `seconds ≈ x · [1, prefill tokens, decode rows]`.
#[derive(Clone, Debug, Default)]
pub struct StepCostModel {
    /// Decayed Σ x xᵀ.
    xtx: [[f64; 3]; 3],
    /// Decayed Σ x · seconds.
    xty: [f64; 3],
    samples: u64,
}

impl StepCostModel {
    /// Records a step of `prefill` prefill tokens and `decodes` decode rows that took `seconds`.
    pub fn observe(&mut self, prefill: usize, decodes: usize, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let x = [1.0, prefill as f64, decodes as f64];
        for (i, row) in self.xtx.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = *v * DECAY + x[i] * x[j];
            }
            self.xty[i] = self.xty[i] * DECAY + x[i] * seconds;
        }
        self.samples += 1;
    }

    /// `[fixed, per prefill token, per decode row]` in seconds, each at least 0; `None`
    /// until enough steps were seen.
    pub fn coefficients(&self) -> Option<[f64; 3]> {
        if self.samples < MIN_SAMPLES {
            return None;
        }
        // A small ridge keeps directions the data has not explored (say, only decodes
        // seen so far) at zero instead of unbounded.
        let mut a = self.xtx;
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += 1e-9 + 1e-6 * row[i];
        }
        let theta = solve3(a, self.xty)?;
        Some(theta.map(|t| t.max(0.0)))
    }

    /// Predicted seconds of a step.
    pub fn predict(&self, prefill: usize, decodes: usize) -> Option<f64> {
        let [fixed, per_token, per_row] = self.coefficients()?;
        Some(fixed + per_token * prefill as f64 + per_row * decodes as f64)
    }
}

/// The prefill budget of a step of `shape` under `target`; `usize::MAX` when not limited.
pub fn prefill_budget(model: &StepCostModel, target: ItlTarget, shape: StepShape) -> usize {
    let Some([fixed, per_token, per_row]) = model.coefficients() else {
        return usize::MAX;
    };
    let seconds = match target {
        ItlTarget::Off => return usize::MAX,
        ItlTarget::Max(d) => d.as_secs_f64(),
        ItlTarget::Auto => AUTO_ITL_FACTOR * (fixed + per_row * shape.batch as f64),
    };
    if per_token <= 0.0 {
        return usize::MAX;
    }
    let spare = seconds - fixed - per_row * shape.decodes as f64;
    let tokens = (spare / per_token).floor();
    if tokens >= usize::MAX as f64 {
        usize::MAX
    } else {
        (tokens.max(0.0) as usize).max(MIN_PREFILL_TOKENS)
    }
}

/// Solves the 3×3 system `a x = b` by Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..3 {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let rest: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
#[path = "pace_tests.rs"]
mod tests;
