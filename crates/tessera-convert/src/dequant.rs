//! Dequantization of GGML tensor data to `f32`.
//!
//! Block layouts (32 values per block, little-endian):
//!
//! ```text
//! Q8_0  | d: f16 | q[0..32]: i8                        value i    = q[i] * d
//! Q4_0  | d: f16 | qs[0..16]: two 4-bit values a byte  value j    = (qs[j] & 0xF - 8) * d
//!                                                      value j+16 = (qs[j] >> 4  - 8) * d
//! Q4_1  | d: f16 | m: f16 | qs[0..16]                  value j    = (qs[j] & 0xF) * d + m
//!                                                      value j+16 = (qs[j] >> 4)  * d + m
//! ```
//!
//! Arithmetic is a plain `f32` multiply then add, never fused, so results match ggml's
//! reference dequantization and Python `gguf.quants.dequantize` bit for bit.

use half::{bf16, f16};

use crate::error::ConvertError;
use crate::ggml_type::GgmlType;

const QK: usize = 32;

/// Dequantizes `n_elements` values of type `ty` stored in `bytes`.
///
/// `tensor` only names the tensor in errors. Fails for types other than F32, F16, BF16,
/// Q8_0, Q4_0 and Q4_1, and when `bytes` does not hold exactly `n_elements` values.
pub fn dequantize(
    tensor: &str,
    ty: GgmlType,
    bytes: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, ConvertError> {
    let expected = storage_size(tensor, ty, n_elements)?;
    if bytes.len() != expected {
        return Err(ConvertError::layout(
            tensor,
            format!(
                "{n_elements} {ty} values need {expected} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    let mut out = vec![0.0f32; n_elements];
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => dequant_q8_0(bytes, &mut out),
        GgmlType::Q4_0 => dequant_q4_0(bytes, &mut out),
        GgmlType::Q4_1 => dequant_q4_1(bytes, &mut out),
        // `storage_size` has already rejected these; kept total without a panic.
        GgmlType::Other(_) => return Err(unsupported(tensor, ty)),
    }
    Ok(out)
}

/// Bytes needed to store `n_elements` values of type `ty`.
pub(crate) fn storage_size(
    tensor: &str,
    ty: GgmlType,
    n_elements: usize,
) -> Result<usize, ConvertError> {
    let (block_values, block_bytes) = ty.block_layout().ok_or_else(|| unsupported(tensor, ty))?;
    if !n_elements.is_multiple_of(block_values) {
        return Err(ConvertError::layout(
            tensor,
            format!("{n_elements} values is not a whole number of {ty} blocks of {block_values}"),
        ));
    }
    (n_elements / block_values)
        .checked_mul(block_bytes)
        .ok_or_else(|| ConvertError::layout(tensor, "byte size overflows"))
}

fn unsupported(tensor: &str, ty: GgmlType) -> ConvertError {
    ConvertError::UnsupportedTensorType {
        tensor: tensor.to_owned(),
        type_name: ty.to_string(),
    }
}

fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

fn dequant_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
        let d = half_at(block, 0);
        for (v, &q) in values.iter_mut().zip(&block[2..]) {
            *v = q as i8 as f32 * d;
        }
    }
}

fn dequant_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = half_at(block, 0);
        let (low, high) = values.split_at_mut(QK / 2);
        for (j, &q) in block[2..].iter().enumerate() {
            low[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            high[j] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

fn dequant_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (block, values) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = half_at(block, 0);
        let m = half_at(block, 2);
        let (low, high) = values.split_at_mut(QK / 2);
        for (j, &q) in block[4..].iter().enumerate() {
            low[j] = (q & 0xF) as f32 * d + m;
            high[j] = (q >> 4) as f32 * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn f32_f16_bf16_decode_little_endian_values() {
        let f32_bytes: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize("t", GgmlType::F32, &f32_bytes, 2).unwrap(),
            [1.5, -2.25]
        );

        // 0x3C00 = 1.0, 0xC100 = -2.5 in IEEE half.
        let half = [0x00, 0x3C, 0x00, 0xC1];
        assert_eq!(
            dequantize("t", GgmlType::F16, &half, 2).unwrap(),
            [1.0, -2.5]
        );

        // 0x3F80 = 1.0, 0xC020 = -2.5 in bfloat16.
        let brain = [0x80, 0x3F, 0x20, 0xC0];
        assert_eq!(
            dequantize("t", GgmlType::Bf16, &brain, 2).unwrap(),
            [1.0, -2.5]
        );
    }

    #[test]
    fn q8_0_block_is_scale_times_signed_byte() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let values = dequantize("t", GgmlType::Q8_0, &block, 32).unwrap();
        let expected: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.25).collect();
        assert_eq!(values, expected);
        assert_eq!(values[0], -4.0);
        assert_eq!(values[31], 3.75);
    }

    #[test]
    fn q4_0_block_low_nibbles_first_then_high_nibbles_minus_eight() {
        let mut block = f16_bytes(2.0).to_vec();
        // Byte j holds j in the low nibble and 15 - j in the high nibble.
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = dequantize("t", GgmlType::Q4_0, &block, 32).unwrap();
        assert_eq!(values[0], -16.0); // (0 - 8) * 2
        assert_eq!(values[15], 14.0); // (15 - 8) * 2
        assert_eq!(values[16], 14.0); // high nibble of byte 0 is 15
        assert_eq!(values[31], -16.0); // high nibble of byte 15 is 0
        for j in 0..16 {
            assert_eq!(values[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(values[j + 16], (7.0 - j as f32) * 2.0);
        }
    }

    #[test]
    fn q4_1_block_is_nibble_times_scale_plus_min() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        // A second block with a scale that is not exact in f16 arithmetic shortcuts.
        block.extend(f16_bytes(0.1));
        block.extend(f16_bytes(0.3));
        block.extend([0x21u8; 16]);
        let values = dequantize("t", GgmlType::Q4_1, &block, 64).unwrap();
        assert_eq!(values[0], -1.0);
        assert_eq!(values[1], -0.5);
        assert_eq!(values[15], 6.5);
        assert_eq!(values[16], 6.5);
        assert_eq!(values[31], -1.0);
        let d = f16::from_f32(0.1).to_f32();
        let m = f16::from_f32(0.3).to_f32();
        assert_eq!(values[32], 1.0 * d + m);
        assert_eq!(values[48], 2.0 * d + m);
    }

    #[test]
    fn unsupported_type_error_names_type_and_tensor() {
        let err =
            dequantize("blk.0.attn_q.weight", GgmlType::from_id(12), &[0; 144], 256).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Q4_K") && text.contains("blk.0.attn_q.weight"),
            "{text}"
        );
    }

    #[test]
    fn wrong_byte_count_and_partial_block_are_errors() {
        assert!(dequantize("t", GgmlType::Q4_1, &[0; 19], 32).is_err());
        assert!(dequantize("t", GgmlType::Q8_0, &[0; 34], 16).is_err());
        assert!(dequantize("t", GgmlType::F32, &[0; 7], 2).is_err());
    }
}
