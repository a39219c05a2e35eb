//! The readable forms of a scaling report: a Markdown table per phase and an SVG plot of
//! throughput and scaling efficiency against rank count, one line per strategy.

use std::fmt::Write;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::scaling::{PhaseResult, RunResult, ScalingReport};

/// Throughput of the same strategy at tp 1, if it was measured.
fn baseline<'a>(
    report: &'a ScalingReport,
    run: &RunResult,
    phase: fn(&RunResult) -> &PhaseResult,
) -> Option<&'a PhaseResult> {
    report
        .runs
        .iter()
        .find(|r| r.strategy == run.strategy && r.tp == 1)
        .map(phase)
}

/// (speedup, efficiency) of `run` against tp 1 of its strategy.
pub(crate) fn speedup(
    report: &ScalingReport,
    run: &RunResult,
    phase: fn(&RunResult) -> &PhaseResult,
) -> Option<(f64, f64)> {
    let base = baseline(report, run, phase)?;
    let s = phase(run).tokens_per_s / base.tokens_per_s;
    Some((s, s / run.tp as f64))
}

fn bytes(v: &[u64]) -> String {
    v.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

fn table(s: &mut String, report: &ScalingReport, phase: fn(&RunResult) -> &PhaseResult) {
    let _ = writeln!(
        s,
        "| strategy | tp | tok/s | speedup | efficiency | comm share (measured / predicted) | predicted ms | measured ms | error | predicted bytes/step per rank | measured bytes/step per rank | bytes equal | note |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"
    );
    for run in &report.runs {
        let p = phase(run);
        let (sp, eff) = speedup(report, run, phase).map_or(("-".into(), "-".into()), |(s, e)| {
            (format!("{s:.2}"), format!("{e:.2}"))
        });
        let equal = if p.measured_bytes_per_rank == p.predicted_bytes_per_rank && p.bytes_constant {
            "yes"
        } else {
            "**no**"
        };
        let note = if run.oversubscribed {
            format!("oversubscribed: {} ranks on {} cores", run.tp, report.cores)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {} | {:.0}% / {:.0}% | {:.2} | {:.2} | {:+.0}% | {} | {} | {} | {} |",
            run.strategy,
            run.tp,
            p.tokens_per_s,
            sp,
            eff,
            p.comm_share * 100.0,
            p.predicted_comm_share * 100.0,
            p.predicted_step_s * 1e3,
            p.measured_step_s * 1e3,
            p.time_error * 100.0,
            bytes(&p.predicted_bytes_per_rank),
            bytes(&p.measured_bytes_per_rank),
            equal,
            note
        );
    }
}

/// The report as Markdown: the workload, then one table for decode and one for prefill.
pub(crate) fn markdown(report: &ScalingReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Scaling report: {}\n", report.model);
    let _ = writeln!(
        s,
        "Workload: {} sequences; a prefill of {} tokens each in one step, then {} decode steps of one token per sequence; {} repeats, medians. \
         Collective bytes and time are each rank's communicator counters around every step; comm share is the mean over ranks of time inside collectives over the step's wall time. \
         Predictions: `tessera_plan::cost` with hardware profile `{}`; error = (predicted - measured) / measured. \
         Reduction of row-parallel partial sums (engine and predictions): {}. \
         This machine has {} cores: rank counts above that are oversubscribed (rank threads time-share cores, and a collective waits for descheduled ranks). \
         Load average (1, 5, 15 min) before and after: {}.\n",
        report.batch,
        report.prompt_tokens,
        report.decode_steps,
        report.repeats,
        report.hardware,
        report.reduce.name(),
        report.cores,
        report.load_average.join(" -> ")
    );
    let _ = writeln!(s, "## Decode ({} tokens per step)\n", report.batch);
    table(&mut s, report, |r| &r.decode);
    let _ = writeln!(
        s,
        "\n## Prefill ({} tokens per step)\n",
        report.batch * report.prompt_tokens
    );
    table(&mut s, report, |r| &r.prefill);
    let _ = writeln!(
        s,
        "\nSpeedup and efficiency are against tp 1 of the same strategy (efficiency = speedup / tp). Raw numbers: `scaling.json`; plans, weights hash, build commit and command line: `manifest.json`; plot: `scaling.svg`."
    );
    s
}

type Metric = (
    &'static str,
    &'static str,
    fn(&ScalingReport, &RunResult) -> Option<f64>,
);

/// Plots decode and prefill throughput and efficiency against rank count, one line per strategy.
pub(crate) fn plot(report: &ScalingReport, path: &Path) -> Result<()> {
    let metrics: [Metric; 4] = [
        ("decode throughput", "tokens/s", |_, r| {
            Some(r.decode.tokens_per_s)
        }),
        ("decode scaling efficiency", "speedup / tp", |rep, r| {
            speedup(rep, r, |x| &x.decode).map(|(_, e)| e)
        }),
        ("prefill throughput", "tokens/s", |_, r| {
            Some(r.prefill.tokens_per_s)
        }),
        ("prefill scaling efficiency", "speedup / tp", |rep, r| {
            speedup(rep, r, |x| &x.prefill).map(|(_, e)| e)
        }),
    ];
    let mut strategies: Vec<&str> = Vec::new();
    for r in &report.runs {
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    let max_tp = report.runs.iter().map(|r| r.tp).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    for (area, metric) in root.split_evenly((2, 2)).iter().zip(metrics) {
        draw_panel(area, report, &strategies, max_tp, metric).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One chart of the 2 x 2 grid: `metric` against rank count, a line per strategy.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    report: &ScalingReport,
    strategies: &[&str],
    max_tp: f64,
    (title, unit, metric): Metric,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let series: Vec<(usize, Vec<(f64, f64)>)> = strategies
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pts = report
                .runs
                .iter()
                .filter(|r| r.strategy == *s)
                .filter_map(|r| metric(report, r).map(|v| (r.tp as f64, v)))
                .collect();
            (i, pts)
        })
        .collect();
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..max_tp + 0.5, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!("ranks (above {} oversubscribed)", report.cores))
        .y_desc(unit)
        .x_labels(max_tp as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, pts) in series {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(strategies[i])
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_plan::cost::ReduceMode;

    fn phase(tok_s: f64, measured: Vec<u64>, predicted: Vec<u64>) -> PhaseResult {
        PhaseResult {
            tokens_per_step: 4,
            measured_step_s: 4.0 / tok_s,
            tokens_per_s: tok_s,
            comm_s_per_rank: vec![0.0; measured.len()],
            compute_s_per_rank: vec![4.0 / tok_s; measured.len()],
            comm_share: 0.1,
            calls_per_step: 3,
            measured_bytes_per_rank: measured,
            bytes_constant: true,
            predicted_step_s: 2.0 / tok_s,
            time_error: -0.5,
            predicted_bytes_per_rank: predicted,
            predicted_comm_share: 0.2,
        }
    }

    fn run(strategy: &str, tp: usize, tok_s: f64, bytes_ok: bool) -> RunResult {
        let measured = vec![100; tp];
        let predicted = if bytes_ok {
            measured.clone()
        } else {
            vec![99; tp]
        };
        RunResult {
            strategy: strategy.into(),
            tp,
            oversubscribed: tp > 2,
            prefill: phase(tok_s * 10.0, measured.clone(), predicted.clone()),
            decode: phase(tok_s, measured, predicted),
        }
    }

    fn report() -> ScalingReport {
        ScalingReport {
            model: "m".into(),
            cores: 2,
            hardware: "cpu-here".into(),
            reduce: ReduceMode::Fast,
            batch: 4,
            prompt_tokens: 8,
            decode_steps: 2,
            repeats: 1,
            load_average: vec!["0.50 0.40 0.30".into(), "1.50 0.60 0.35".into()],
            runs: vec![
                run("megatron", 1, 50.0, true),
                run("megatron", 2, 75.0, true),
                run("megatron", 4, 100.0, false),
                run("replicated", 2, 25.0, true),
            ],
        }
    }

    #[test]
    fn markdown_gives_speedup_efficiency_oversubscription_and_byte_mismatches() {
        let md = markdown(&report());
        assert!(md.contains("| megatron | 2 | 75.0 | 1.50 | 0.75 |"), "{md}");
        assert!(
            md.contains("| megatron | 4 | 100.0 | 2.00 | 0.50 |"),
            "{md}"
        );
        assert!(md.contains("oversubscribed: 4 ranks on 2 cores"));
        assert!(md.contains("| **no** |"));
        // No tp 1 for replicated: no speedup rather than a made-up one.
        assert!(md.contains("| replicated | 2 | 25.0 | - | - |"), "{md}");
        assert!(md.contains("-50%"));
        assert!(md.contains("0.50 0.40 0.30 -> 1.50 0.60 0.35"));
    }

    #[test]
    fn plot_writes_an_svg_with_a_line_per_strategy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.svg");
        plot(&report(), &path).expect("plots");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("megatron") && svg.contains("replicated"));
        assert!(svg.contains("decode scaling efficiency"));
    }
}
