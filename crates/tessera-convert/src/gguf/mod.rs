//! Memory-mapped GGUF reader (versions 2 and 3): metadata, tensor infos and tensor data.

mod metadata;
mod parse;
#[cfg(test)]
pub(crate) mod test_writer;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use metadata::{Metadata, MetadataValue};
pub use parse::{parse_header, GgufHeader, DEFAULT_ALIGNMENT};

use crate::dequant::{dequantize, storage_size};
use crate::error::ConvertError;
use crate::ggml_type::GgmlType;

/// Description of one tensor in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions innermost first: `dims[0]` (ne0) is the number of columns.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data, relative to the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of values, or an error if it overflows.
    pub fn n_elements(&self) -> Result<usize, ConvertError> {
        self.dims
            .iter()
            .try_fold(1usize, |acc, &d| {
                usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
            })
            .ok_or_else(|| ConvertError::layout(&self.name, "element count overflows"))
    }

    /// The row-major shape, outermost first (the Hugging Face / PyTorch order).
    pub fn shape(&self) -> Result<Vec<usize>, ConvertError> {
        // `n_elements` has checked that every dimension fits `usize`.
        self.n_elements()?;
        Ok(self.dims.iter().rev().map(|&d| d as usize).collect())
    }
}

/// An open, memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    header: GgufHeader,
}

impl GgufFile {
    /// Maps `path` into memory and parses its header.
    pub fn open(path: &Path) -> Result<Self, ConvertError> {
        let file = File::open(path).map_err(ConvertError::io("opening", path))?;
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates the file while it is mapped, reads may fault; this is the usual
        // contract of memory-mapped model loaders, and the file is not modified by us.
        let mmap = unsafe { Mmap::map(&file) }.map_err(ConvertError::io("memory-mapping", path))?;
        let header = parse_header(&mmap, path)?;
        Ok(GgufFile {
            path: path.to_owned(),
            mmap,
            header,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Alignment of tensor data in bytes.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor descriptions in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor of a dequantizable type, bounds-checked against the file.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], ConvertError> {
        let n = info.n_elements()?;
        if let (Some((block, _)), Some(&ne0)) = (info.ggml_type.block_layout(), info.dims.first()) {
            if ne0 % block as u64 != 0 {
                return Err(ConvertError::layout(
                    &info.name,
                    format!(
                        "row length {ne0} is not a multiple of the {} block size {block}",
                        info.ggml_type
                    ),
                ));
            }
        }
        let len = storage_size(&info.name, info.ggml_type, n)?;
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.header.data_start));
        match start.and_then(|s| Some((s, s.checked_add(len)?))) {
            Some((s, e)) if e <= self.mmap.len() => Ok(&self.mmap[s..e]),
            _ => Err(ConvertError::layout(
                &info.name,
                format!(
                    "data ({len} bytes at offset {}) runs past the end of the file",
                    info.offset
                ),
            )),
        }
    }

    /// Dequantizes a tensor to `f32`, row-major with the shape of [`TensorInfo::shape`].
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, ConvertError> {
        let data = self.tensor_data(info)?;
        dequantize(&info.name, info.ggml_type, data, info.n_elements()?)
    }
}
