//! ggml's reference quantizers (`quantize_row_*_ref`), one block of 32 values at a time.

use half::f16;

use super::{BlockFormat, BLOCK};

/// Appends the GGML block of `x` (32 values) in `format` to `out`.
pub(crate) fn block(format: BlockFormat, x: &[f32], out: &mut Vec<u8>) {
    match format {
        BlockFormat::Q8_0 => q8_0(x, out),
        BlockFormat::Q4_0 => q4_0(x, out),
        BlockFormat::Q4_1 => q4_1(x, out),
    }
}

/// The reciprocal ggml scales by (0 for a zero scale).
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    // The value of largest magnitude, keeping its sign (the first one on ties).
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..BLOCK / 2).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

fn q4_1(x: &[f32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    out.extend((0..BLOCK / 2).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}
