//! `model.blocks.safetensors`: the GGUF's block-quantized matrices kept as they are, for
//! engines that run quantized weights natively (`--dtype q4_1`, ...).
//!
//! ```text
//! tensor  "model.layers.0.mlp.up_proj.weight": dtype U8, shape [rows, row bytes]
//!         each row = cols / 32 GGML blocks (Q8_0 34 B, Q4_0 18 B, Q4_1 20 B), Hugging Face
//!         row order (Q/K rows un-interleaved whole, as in model.safetensors)
//! __metadata__ "model.layers.0.mlp.up_proj.weight": "q4_1"     (its block format)
//! ```
//!
//! Tensors stored unquantized in the GGUF (norms; F32/F16/BF16 matrices) are left out: the
//! f32 `model.safetensors` has them exactly.

use std::path::Path;

use crate::convert::PlannedTensor;
use crate::error::ConvertError;
use crate::ggml_type::GgmlType;
use crate::gguf::GgufFile;
use crate::permute::unpermute_qk_rows;
use crate::safetensors_out::{Dtype, SafetensorsWriter};

/// File name of the block-quantized tensors inside a converted model directory.
pub const BLOCKS_FILE: &str = "model.blocks.safetensors";

/// The format name stored in the metadata for a block type, if it is one kept natively.
fn format_name(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::Q8_0 => Some("q8_0"),
        GgmlType::Q4_0 => Some("q4_0"),
        GgmlType::Q4_1 => Some("q4_1"),
        _ => None,
    }
}

/// Writes every block-quantized matrix of `plan` to `path` (see the module docs).
pub(crate) fn write_blocks(
    gguf: &GgufFile,
    plan: &[PlannedTensor<'_>],
    path: &Path,
) -> Result<(), ConvertError> {
    let kept: Vec<(&PlannedTensor<'_>, &'static str, usize)> = plan
        .iter()
        .filter(|p| p.shape.len() == 2)
        .filter_map(|p| {
            let format = format_name(p.source.ggml_type)?;
            let (block, bytes) = p.source.ggml_type.block_layout()?;
            Some((p, format, p.shape[1] / block * bytes))
        })
        .collect();
    let specs: Vec<(String, Vec<usize>, Dtype)> = kept
        .iter()
        .map(|(p, _, row_bytes)| (p.hf_name.clone(), vec![p.shape[0], *row_bytes], Dtype::U8))
        .collect();
    let metadata: Vec<(String, String)> = kept
        .iter()
        .map(|(p, format, _)| (p.hf_name.clone(), (*format).to_string()))
        .collect();
    let mut writer = SafetensorsWriter::create_with(path, &specs, &metadata)?;
    for (p, _, row_bytes) in &kept {
        let data = gguf.tensor_data(p.source)?;
        match p.unpermute_heads {
            Some(heads) => {
                let rows = unpermute_qk_rows(&p.source.name, data, p.shape[0], *row_bytes, heads)?;
                writer.write_bytes(&p.hf_name, &rows)?;
            }
            None => writer.write_bytes(&p.hf_name, data)?,
        }
    }
    writer.finish()
}
