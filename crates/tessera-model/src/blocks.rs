//! Block-quantized weights (`--dtype q8_0|q4_0|q4_1`): reading `model.blocks.safetensors`
//! (the GGUF's blocks as `tessera pull` keeps them) and the loader's choice per weight.
//!
//! ```text
//!   matmul weight (q/k/v, o, gate/up, down, untied head):
//!       stored in the blocks file in the dtype's format -> used as stored, sliced
//!       otherwise                                       -> f32 weights quantized to it
//!   embedding (and a tied head):
//!       stored in the blocks file in any block format   -> used as stored, sliced
//!       otherwise                                       -> f32 weights quantized to Q8_0
//!
//!   row split (column-parallel):  slice_rows, any rows
//!   column split (row-parallel):  slice_cols, both ends on 32-column block boundaries,
//!                                 else refused at load (ModelError::BlockSplit)
//! ```
//!
//! Fused q/k/v and gate/up stack their parts' block rows (same format, same columns).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use safetensors::tensor::Dtype;
use tessera_kernels::{BlockFormat, BlockTensor, BLOCK};
use tessera_plan::{Role, WeightKind};

use crate::backend::{Backend, Weight, WeightDtype, WeightValues};
use crate::error::ModelError;
use crate::rank::Loader;
use crate::weights::{map_file, MappedFile};

/// File name of the block-quantized tensors in a model directory.
pub(crate) const BLOCKS_FILE: &str = "model.blocks.safetensors";

/// `model.blocks.safetensors`: U8 tensors `[rows, row bytes]` and each one's block format.
pub(crate) struct BlockFile {
    file: MappedFile,
    /// Tensor name -> its block format (names with formats Tessera cannot run are left out).
    formats: HashMap<String, BlockFormat>,
}

impl BlockFile {
    /// Maps the blocks file of `dir`; `None` when the directory has none.
    pub(crate) fn open(dir: &Path) -> Result<Option<Self>, ModelError> {
        let path = dir.join(BLOCKS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let file = map_file(&path)?;
        let formats = file
            .tensors
            .keys()
            .filter_map(|name| {
                let format = parse_format(file.metadata.get(name)?)?;
                Some((name.clone(), format))
            })
            .collect();
        Ok(Some(Self { file, formats }))
    }

    /// The block format `name` is stored in, if the file holds it.
    pub(crate) fn format(&self, name: &str) -> Option<BlockFormat> {
        self.formats.get(name).copied()
    }

    /// Rows `rows` and columns `cols` of tensor `name` (whole shape `full`), as stored.
    fn load(
        &self,
        name: &str,
        format: BlockFormat,
        full: [usize; 2],
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Result<BlockTensor, ModelError> {
        let info = &self.file.tensors[name];
        let row_bytes = full[1] / BLOCK * format.block_bytes();
        if info.dtype != Dtype::U8 || info.shape != [full[0], row_bytes] || rows.end > full[0] {
            return Err(ModelError::WeightShape {
                name: format!("{name} ({} in {})", format_name(format), BLOCKS_FILE),
                expected: vec![full[0], row_bytes],
                got: info.shape.clone(),
            });
        }
        let (begin, _) = info.data_offsets;
        let at = self.file.data_start + begin;
        let bytes = &self.file.map[at + rows.start * row_bytes..at + rows.end * row_bytes];
        let t = BlockTensor::new(format, rows.len(), full[1], bytes.to_vec())?;
        Ok(if cols == (0..full[1]) {
            t
        } else {
            t.slice_cols(cols)?
        })
    }
}

/// The block format a metadata value names.
fn parse_format(s: &str) -> Option<BlockFormat> {
    WeightDtype::parse(s)?.block_format()
}

/// The metadata name of a block format.
fn format_name(f: BlockFormat) -> &'static str {
    match f {
        BlockFormat::Q8_0 => "q8_0",
        BlockFormat::Q4_0 => "q4_0",
        BlockFormat::Q4_1 => "q4_1",
    }
}

impl Loader<'_> {
    /// One weight's slice at a block dtype and its shape: the stored blocks when `accept`
    /// takes their format, else its f32 values (for the caller to quantize).
    fn block_values(
        &self,
        layer: usize,
        kind: WeightKind,
        dtype: &'static str,
        accept: impl Fn(BlockFormat) -> bool,
    ) -> Result<(WeightValues, [usize; 2]), ModelError> {
        let (name, role) = self.name_role(layer, kind);
        let full = kind.full_shape(self.shape);
        let (rows, cols) = match role {
            Role::Replicated => (0..full[0], 0..full[1]),
            Role::SplitRows { span } => (span.start..span.end, 0..full[1]),
            Role::PartialSum { span } => (0..full[0], span.start..span.end),
        };
        let aligned = |c: usize| c.is_multiple_of(BLOCK);
        if !(aligned(cols.start) && aligned(cols.end) && aligned(full[1])) {
            return Err(ModelError::BlockSplit {
                name,
                dtype,
                start: cols.start,
                end: cols.end,
                total: full[1],
            });
        }
        let shape = [rows.len(), cols.len()];
        let stored = self
            .files
            .blocks()
            .and_then(|b| Some((b, b.format(&name)?)));
        let values = match stored {
            Some((file, format)) if accept(format) => {
                WeightValues::Blocks(file.load(&name, format, full, rows, cols)?)
            }
            _ => WeightValues::F32(self.load(layer, kind)?),
        };
        Ok((values, shape))
    }

    /// Several weights of equal width stacked into one block matrix (fused q/k/v,
    /// gate/up): each in `format`, but a tied head as the embedding table is.
    pub(crate) fn block_matrix<B: Backend>(
        &self,
        backend: &B,
        parts: &[(usize, WeightKind)],
        rows: usize,
        cols: usize,
        format: BlockFormat,
    ) -> Result<Weight<B>, ModelError> {
        let mut stacked: Option<(BlockFormat, Vec<u8>)> = None;
        for &(layer, kind) in parts {
            let t = if kind == WeightKind::LmHead && self.shape.tied_embeddings {
                self.block_part(
                    layer,
                    kind,
                    format_name(format),
                    |_| true,
                    BlockFormat::Q8_0,
                )?
            } else {
                self.block_part(layer, kind, format_name(format), |f| f == format, format)?
            };
            // Fused parts are all in `format`; only a tied head (alone) may differ.
            let (_, bytes) = stacked.get_or_insert_with(|| (t.format(), Vec::new()));
            bytes.extend_from_slice(t.bytes());
        }
        let (f, bytes) = stacked.unwrap_or((format, Vec::new()));
        let t = BlockTensor::new(f, rows, cols, bytes)?;
        Ok(Weight {
            data: backend.block_matrix(t)?,
            rows,
            cols,
        })
    }

    /// One weight's slice as blocks: stored ones `accept` takes, else quantized to `fallback`.
    fn block_part(
        &self,
        layer: usize,
        kind: WeightKind,
        dtype: &'static str,
        accept: impl Fn(BlockFormat) -> bool,
        fallback: BlockFormat,
    ) -> Result<BlockTensor, ModelError> {
        match self.block_values(layer, kind, dtype, accept)? {
            (WeightValues::Blocks(t), _) => Ok(t),
            (WeightValues::F32(v), [rows, cols]) => {
                Ok(BlockTensor::quantize(fallback, &v, rows, cols)?)
            }
        }
    }

    /// The embedding table of this rank (`head`: also the tied output head).
    pub(crate) fn table<B: Backend>(
        &self,
        backend: &B,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        head: bool,
    ) -> Result<Weight<B>, ModelError> {
        let kind = WeightKind::Embedding;
        let values = if dtype.block_format().is_some() {
            self.block_values(0, kind, dtype.name(), |_| true)?.0
        } else {
            WeightValues::F32(self.load(0, kind)?)
        };
        Ok(Weight {
            data: backend.table(values, rows, cols, dtype, head)?,
            rows,
            cols,
        })
    }
}
