//! Parsing of the GGUF header: magic, version, metadata and tensor infos.
//!
//! ```text
//! "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv     x  key: string | value type u32 | value
//! n_tensors x name: string | n_dims u32 | dims u64 x n_dims (innermost first) | type u32 | offset u64
//! padding to `general.alignment` (default 32), then tensor data; offsets are relative to it
//! ```
//!
//! Every length read from the file is checked against the bytes that remain, so a
//! truncated or hostile file gives an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::Path;

use super::metadata::{Metadata, MetadataValue};
use super::TensorInfo;
use crate::error::ConvertError;
use crate::ggml_type::GgmlType;

/// The default alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// Arrays of arrays are legal; deeper nesting than this is treated as a corrupt file.
const MAX_ARRAY_DEPTH: usize = 8;

/// Everything in a GGUF file before the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment of tensor data in bytes.
    pub alignment: u64,
    /// All metadata key/value pairs.
    pub metadata: Metadata,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Byte offset where tensor data begins.
    pub data_start: usize,
}

/// Parses the header of the GGUF file whose bytes are `bytes`; `path` names it in errors.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<GgufHeader, ConvertError> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic = cur.take(4, "magic")?;
    if magic != b"GGUF" {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(ConvertError::NotGguf {
            path: path.to_owned(),
            found,
        });
    }
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        let hint = if (2..=3).contains(&version.swap_bytes()) {
            "; this looks like a big-endian GGUF, which is not supported"
        } else if version == 1 {
            "; re-export the model with a current llama.cpp"
        } else {
            ""
        };
        return Err(ConvertError::GgufVersion { version, hint });
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("metadata count")?;

    let mut values = BTreeMap::new();
    for _ in 0..n_kv {
        let key_at = cur.pos;
        let key = cur.string("metadata key")?;
        let value_type = cur.u32("metadata value type")?;
        let value = cur.value(value_type, 0)?;
        if values.insert(key.clone(), value).is_some() {
            return Err(malformed(
                key_at,
                format!("metadata key `{key}` appears twice"),
            ));
        }
    }
    let metadata = Metadata::new(values);
    let alignment = metadata
        .opt_u64("general.alignment")?
        .unwrap_or(DEFAULT_ALIGNMENT);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(ConvertError::MetadataValue {
            key: "general.alignment".into(),
            reason: format!("{alignment} is not a power of two"),
        });
    }

    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        tensors.push(cur.tensor_info(alignment)?);
    }
    let data_start = u64::try_from(cur.pos)
        .ok()
        .and_then(|pos| pos.checked_next_multiple_of(alignment))
        .and_then(|start| usize::try_from(start).ok())
        .ok_or_else(|| malformed(cur.pos, "tensor data start overflows"))?;
    Ok(GgufHeader {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}

fn malformed(offset: usize, reason: impl Into<String>) -> ConvertError {
    ConvertError::GgufMalformed {
        offset,
        reason: reason.into(),
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ConvertError> {
        if n > self.remaining() {
            return Err(malformed(
                self.pos,
                format!(
                    "file ends while reading {what} ({n} bytes needed, {} left)",
                    self.remaining()
                ),
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ConvertError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ConvertError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length that must not exceed what is left of the file, given each item's minimum size.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, ConvertError> {
        let at = self.pos;
        let n = self.u64(what)?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_item_bytes) <= self.remaining() => Ok(n),
            _ => Err(malformed(at, format!("{what} {n} exceeds the file size"))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ConvertError> {
        let len = self.count(what, 1)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| malformed(at, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<MetadataValue, ConvertError> {
        Ok(match value_type {
            0 => MetadataValue::U8(u8::from_le_bytes(self.array("UINT8")?)),
            1 => MetadataValue::I8(i8::from_le_bytes(self.array("INT8")?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array("UINT16")?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array("INT16")?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.array("UINT32")?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array("INT32")?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array("FLOAT32")?)),
            7 => {
                let at = self.pos;
                match self.array::<1>("BOOL")?[0] {
                    0 => MetadataValue::Bool(false),
                    1 => MetadataValue::Bool(true),
                    b => return Err(malformed(at, format!("BOOL value {b} is neither 0 nor 1"))),
                }
            }
            8 => MetadataValue::String(self.string("string value")?),
            9 => self.array_value(depth)?,
            10 => MetadataValue::U64(u64::from_le_bytes(self.array("UINT64")?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array("INT64")?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array("FLOAT64")?)),
            other => {
                return Err(malformed(
                    self.pos,
                    format!("unknown metadata value type {other}"),
                ))
            }
        })
    }

    fn array_value(&mut self, depth: usize) -> Result<MetadataValue, ConvertError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(malformed(self.pos, "arrays nested too deeply"));
        }
        let item_type = self.u32("array item type")?;
        let len = self.count("array length", 1)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(self.value(item_type, depth + 1)?);
        }
        Ok(MetadataValue::Array(items))
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo, ConvertError> {
        let at = self.pos;
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(malformed(
                at,
                format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64("tensor dimension"))
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = GgmlType::from_id(self.u32("tensor type")?);
        let offset = self.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(malformed(
                at,
                format!("tensor `{name}` offset {offset} is not aligned to {alignment}"),
            ));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}
