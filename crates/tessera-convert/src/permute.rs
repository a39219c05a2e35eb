//! Undoing the row order llama.cpp gives attention Q and K weights in GGUF files.
//!
//! Hugging Face Llama applies rotary embeddings to the two halves of each head
//! (`rotate_half`); llama.cpp's rope pairs adjacent rows instead. Its converter therefore
//! interleaves the halves of every head:
//!
//! ```text
//! one head, head_dim = 8:
//!   Hugging Face rows   0 1 2 3 | 4 5 6 7     first half | second half
//!   GGUF rows           0 4 1 5 2 6 3 7       (i, i + head_dim/2) side by side
//! ```
//!
//! In numpy terms llama.cpp did
//! `gguf = hf.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)`,
//! so GGUF row `h*head_dim + 2*i + s` holds Hugging Face row `h*head_dim + s*head_dim/2 + i`.

use crate::error::ConvertError;

/// Turns GGUF-ordered Q or K weight rows (`rows x cols`, row-major) back into Hugging Face
/// order. `n_head` is the number of attention heads for Q and of key/value heads for K.
/// Rows move whole, so `T` may be an f32 value or a byte of a quantized row (`cols` bytes).
pub fn unpermute_qk_rows<T: Copy + Default>(
    tensor: &str,
    weights: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<T>, ConvertError> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(ConvertError::layout(
            tensor,
            format!("{rows} rows cannot be split into {n_head} heads of even size"),
        ));
    }
    if rows.checked_mul(cols) != Some(weights.len()) {
        return Err(ConvertError::layout(
            tensor,
            format!(
                "{} values do not form a {rows} x {cols} matrix",
                weights.len()
            ),
        ));
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![T::default(); weights.len()];
    for (gguf_row, src) in weights.chunks_exact(cols.max(1)).enumerate().take(rows) {
        let (head, within) = (gguf_row / head_dim, gguf_row % head_dim);
        let (i, s) = (within / 2, within % 2);
        let hf_row = head * head_dim + s * half + i;
        out[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(src);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's direction, written as the literal index map of
    /// `reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2)`: out[h][i][s] = in[h][s][i].
    fn permute_like_llama_cpp(hf: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = Vec::with_capacity(hf.len());
        for h in 0..n_head {
            for i in 0..half {
                for s in 0..2 {
                    let row = (h * 2 + s) * half + i;
                    out.extend_from_slice(&hf[row * cols..(row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_restores_hand_checked_head_order() {
        // One column whose value is the Hugging Face row index, so the GGUF column shows
        // which Hugging Face row each GGUF row holds.
        let gguf = [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0];
        let hf = unpermute_qk_rows("t", &gguf, 8, 1, 1).unwrap();
        assert_eq!(hf, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);

        // Two heads of four rows, two columns: each head is unpermuted on its own.
        let gguf = [
            0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.,
        ];
        let hf = unpermute_qk_rows("t", &gguf, 8, 2, 2).unwrap();
        assert_eq!(
            hf,
            [0., 0., 1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7.]
        );
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute_for_q_and_gqa_k_shapes() {
        for (rows, cols, n_head) in [(576, 7, 9), (192, 5, 3), (8, 3, 1), (24, 1, 6)] {
            let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let gguf = permute_like_llama_cpp(&hf, rows, cols, n_head);
            assert_ne!(gguf, hf);
            assert_eq!(
                unpermute_qk_rows("t", &gguf, rows, cols, n_head).unwrap(),
                hf
            );
        }
    }

    #[test]
    fn unpermute_rejects_odd_head_dim_and_wrong_length() {
        assert!(unpermute_qk_rows("t", &[0.0; 6], 6, 1, 2).is_err());
        assert!(unpermute_qk_rows("t", &[0.0; 7], 8, 1, 2).is_err());
        assert!(unpermute_qk_rows("t", &[0.0; 8], 8, 1, 0).is_err());
    }
}
