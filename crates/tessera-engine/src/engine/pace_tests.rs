//! Tests of the step-cost fit and the prefill budget it gives.

use super::*;

/// A model fitted to steps timed by an exact linear cost (the fit's small ridge moves it by
/// about 1e-5 relative).
fn fitted(fixed: f64, per_token: f64, per_row: f64) -> StepCostModel {
    let mut model = StepCostModel::default();
    for (prefill, decodes) in [
        (512, 0),
        (0, 8),
        (48, 8),
        (0, 16),
        (100, 3),
        (0, 1),
        (16, 30),
    ] {
        let seconds = fixed + per_token * prefill as f64 + per_row * decodes as f64;
        model.observe(prefill, decodes, seconds);
    }
    model
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1e-3)
}

#[test]
fn fit_recovers_an_exact_linear_cost() {
    let [fixed, per_token, per_row] = fitted(0.020, 0.001, 0.0005).coefficients().unwrap();
    assert!(close(fixed, 0.020), "{fixed}");
    assert!(close(per_token, 0.001), "{per_token}");
    assert!(close(per_row, 0.0005), "{per_row}");
}

#[test]
fn fit_is_unused_until_enough_steps_were_seen() {
    let mut model = StepCostModel::default();
    for _ in 0..MIN_SAMPLES - 1 {
        model.observe(64, 4, 0.1);
    }
    assert_eq!(model.coefficients(), None);
    let shape = StepShape {
        decodes: 4,
        batch: 4,
    };
    assert_eq!(prefill_budget(&model, ItlTarget::Auto, shape), usize::MAX);
    model.observe(64, 4, 0.1);
    assert!(model.coefficients().is_some());
}

#[test]
fn fit_follows_a_change_of_machine_speed() {
    let mut model = fitted(0.020, 0.001, 0.0005);
    // The machine becomes twice as slow: within a few dozen steps the fit says so.
    for i in 0..200 {
        let (prefill, decodes) = (i % 5 * 30, 1 + i % 7);
        model.observe(
            prefill,
            decodes,
            2.0 * (0.020 + 0.001 * prefill as f64 + 0.0005 * decodes as f64),
        );
    }
    let predicted = model.predict(100, 10).unwrap();
    assert!((predicted - 0.250).abs() < 0.005, "{predicted}");
}

#[test]
fn explicit_target_leaves_the_rest_of_the_step_to_prefill() {
    let model = fitted(0.020, 0.001, 0.0005);
    let shape = StepShape {
        decodes: 10,
        batch: 10,
    };
    // 60 ms − 20 ms fixed − 10 rows × 0.5 ms = 35 ms = 35 tokens.
    let target = ItlTarget::Max(Duration::from_millis(60));
    let budget = prefill_budget(&model, target, shape);
    assert!((34..=35).contains(&budget), "{budget}");
    let predicted = model.predict(budget, 10).unwrap();
    assert!(predicted <= 0.060 + 1e-9, "{predicted}");
}

#[test]
fn auto_target_is_a_multiple_of_the_queues_decode_step() {
    let model = fitted(0.020, 0.001, 0.0005);
    let decode_step = |rows: usize| 0.020 + 0.0005 * rows as f64;
    // Only the running sequences: 1.5 × 25 ms − 25 ms = 12.5 ms → 12 tokens, raised to the floor.
    let alone = StepShape {
        decodes: 10,
        batch: 10,
    };
    assert_eq!(
        prefill_budget(&model, ItlTarget::Auto, alone),
        MIN_PREFILL_TOKENS
    );
    // A deep queue (64 to run together) allows a longer step: 1.5 × 52 ms − 25 ms = 53 ms.
    let queued = StepShape {
        decodes: 10,
        batch: 64,
    };
    let budget = prefill_budget(&model, ItlTarget::Auto, queued);
    let expected = (AUTO_ITL_FACTOR * decode_step(64) - decode_step(10)) / 0.001;
    assert!(
        (budget as f64 - expected).abs() <= 2.0,
        "{budget} vs {expected}"
    );
}

#[test]
fn unreachable_target_still_admits_the_floor_and_off_is_unlimited() {
    let model = fitted(0.020, 0.001, 0.0005);
    let shape = StepShape {
        decodes: 64,
        batch: 64,
    };
    let tiny = ItlTarget::Max(Duration::from_millis(1));
    assert_eq!(prefill_budget(&model, tiny, shape), MIN_PREFILL_TOKENS);
    assert_eq!(prefill_budget(&model, ItlTarget::Off, shape), usize::MAX);
}

#[test]
fn targets_parse_from_the_command_line_form() {
    assert_eq!("auto".parse::<ItlTarget>(), Ok(ItlTarget::Auto));
    assert_eq!("off".parse::<ItlTarget>(), Ok(ItlTarget::Off));
    assert_eq!(
        "80".parse::<ItlTarget>(),
        Ok(ItlTarget::Max(Duration::from_millis(80)))
    );
    for bad in ["0", "-5", "fast", "NaN", ""] {
        assert!(bad.parse::<ItlTarget>().is_err(), "{bad}");
    }
}
