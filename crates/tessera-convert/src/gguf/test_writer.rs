//! A minimal GGUF writer for tests: enough to round-trip the reader and build tiny models.

use super::MetadataValue;
use crate::ggml_type::GgmlType;

/// Collects metadata and tensors, then serializes them as a GGUF v3 file.
#[derive(Debug, Default)]
pub(crate) struct GgufWriter {
    kv: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    alignment: Option<u64>,
}

impl GgufWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Uses a non-default alignment, recorded as `general.alignment`.
    pub(crate) fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = Some(alignment);
        self.kv.push((
            "general.alignment".into(),
            MetadataValue::U32(alignment as u32),
        ));
        self
    }

    pub(crate) fn kv(mut self, key: &str, value: MetadataValue) -> Self {
        self.kv.push((key.into(), value));
        self
    }

    pub(crate) fn str(self, key: &str, value: &str) -> Self {
        self.kv(key, MetadataValue::String(value.into()))
    }

    pub(crate) fn u32(self, key: &str, value: u32) -> Self {
        self.kv(key, MetadataValue::U32(value))
    }

    pub(crate) fn f32(self, key: &str, value: f32) -> Self {
        self.kv(key, MetadataValue::F32(value))
    }

    /// A tensor with raw data; `dims` are innermost first, as in GGUF.
    pub(crate) fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }

    pub(crate) fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment.unwrap_or(32) as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (key, value) in &self.kv {
            put_string(&mut out, key);
            out.extend(type_id(value).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).next_multiple_of(alignment);
        }
        out.resize(out.len().next_multiple_of(alignment), 0);
        let data_start = out.len();
        for ((_, _, _, data), at) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + at, 0);
            out.extend(data);
        }
        out
    }

    pub(crate) fn write(&self, path: &std::path::Path) {
        std::fs::write(path, self.to_bytes()).unwrap();
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(value: &MetadataValue) -> u32 {
    match value {
        MetadataValue::U8(_) => 0,
        MetadataValue::I8(_) => 1,
        MetadataValue::U16(_) => 2,
        MetadataValue::I16(_) => 3,
        MetadataValue::U32(_) => 4,
        MetadataValue::I32(_) => 5,
        MetadataValue::F32(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
        MetadataValue::U64(_) => 10,
        MetadataValue::I64(_) => 11,
        MetadataValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(items) => {
            out.extend(items.first().map_or(4, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        MetadataValue::U64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend(v.to_le_bytes()),
    }
}
