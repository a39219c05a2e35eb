//! Streaming `.safetensors` writer for f32 tensors (and raw byte tensors of quantized
//! blocks, stored as `U8`), so a model never sits in memory whole.
//!
//! ```text
//! | header length: u64 LE | JSON header, space-padded to 8 bytes | tensor bytes, in header order |
//! header: {"__metadata__":{"format":"pt"}, "<name>":{"dtype":"F32","shape":[..],"data_offsets":[begin,end]}, ...}
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::ConvertError;

/// Writes tensors one at a time, in the order announced when the file was created.
pub(crate) struct SafetensorsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Names and byte counts still to be written, in file order (reversed for `pop`).
    pending: Vec<(String, usize)>,
    bytes: Vec<u8>,
}

impl SafetensorsWriter {
    /// Creates `path` and writes the header for f32 `tensors` (name, shape), in that order.
    pub(crate) fn create(
        path: &Path,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<Self, ConvertError> {
        let specs: Vec<(String, Vec<usize>, Dtype)> = tensors
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), Dtype::F32))
            .collect();
        Self::create_with(path, &specs, &[])
    }

    /// Creates `path` with tensors of either dtype and extra `__metadata__` entries.
    pub(crate) fn create_with(
        path: &Path,
        tensors: &[(String, Vec<usize>, Dtype)],
        metadata: &[(String, String)],
    ) -> Result<Self, ConvertError> {
        let header = header_json(tensors, metadata);
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(path).map_err(ConvertError::io("creating", path))?,
        );
        let write_err = ConvertError::io("writing", path);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(header.as_bytes()))
            .map_err(write_err)?;
        let pending = tensors
            .iter()
            .rev()
            .map(|(name, shape, dtype)| {
                (name.clone(), shape.iter().product::<usize>() * dtype.size())
            })
            .collect();
        Ok(SafetensorsWriter {
            path: path.to_owned(),
            out,
            pending,
            bytes: Vec::new(),
        })
    }

    /// Writes the next tensor's values; `name` and length must match the header.
    pub(crate) fn write_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), ConvertError> {
        self.next(name, values.len() * 4)?;
        for chunk in values.chunks(1 << 16) {
            self.bytes.clear();
            self.bytes
                .extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            self.out
                .write_all(&self.bytes)
                .map_err(ConvertError::io("writing", &self.path))?;
        }
        Ok(())
    }

    /// Writes the next `U8` tensor's bytes; `name` and length must match the header.
    pub(crate) fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), ConvertError> {
        self.next(name, bytes.len())?;
        self.out
            .write_all(bytes)
            .map_err(ConvertError::io("writing", &self.path))
    }

    /// Checks that `name` with `bytes` bytes is the next tensor the header announced.
    fn next(&mut self, name: &str, bytes: usize) -> Result<(), ConvertError> {
        match self.pending.pop() {
            Some((expected, len)) if expected == name && len == bytes => Ok(()),
            other => Err(ConvertError::layout(
                name,
                format!("written out of order or with the wrong size (expected {other:?}, got {bytes} bytes)"),
            )),
        }
    }

    /// Checks that every announced tensor was written and flushes the file to disk.
    pub(crate) fn finish(self) -> Result<(), ConvertError> {
        if let Some((name, _)) = self.pending.last() {
            return Err(ConvertError::layout(
                name,
                "announced in the safetensors header but never written",
            ));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| ConvertError::io("writing", &self.path)(e.into_error()))?;
        file.sync_all()
            .map_err(ConvertError::io("syncing", &self.path))
    }
}

/// Element type of a written tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// 32-bit float.
    F32,
    /// Raw bytes (quantized blocks).
    U8,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::U8 => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::U8 => "U8",
        }
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes.
fn header_json(tensors: &[(String, Vec<usize>, Dtype)], metadata: &[(String, String)]) -> String {
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    for (k, v) in metadata {
        meta.insert(k.clone(), v.clone().into());
    }
    let mut header = format!(r#"{{"__metadata__":{}"#, serde_json::Value::Object(meta));
    let mut offset = 0usize;
    for (name, shape, dtype) in tensors {
        let end = offset + shape.iter().product::<usize>() * dtype.size();
        let entry = serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end] });
        header.push(',');
        header.push_str(&serde_json::Value::String(name.clone()).to_string());
        header.push(':');
        header.push_str(&entry.to_string());
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = vec![
            ("b.weight".to_string(), vec![2, 3]),
            ("a.bias".to_string(), vec![1]),
        ];
        let mut writer = SafetensorsWriter::create(&path, &tensors).unwrap();
        writer
            .write_tensor("b.weight", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
        writer.write_tensor("a.bias", &[-1.5]).unwrap();
        writer.finish().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let b = st.tensor("b.weight").unwrap();
        assert_eq!(b.shape(), [2, 3]);
        assert_eq!(b.dtype(), safetensors::Dtype::F32);
        assert_eq!(&b.data()[4..8], 2.0f32.to_le_bytes());
        assert_eq!(st.tensor("a.bias").unwrap().data(), (-1.5f32).to_le_bytes());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    }

    #[test]
    fn out_of_order_or_missing_tensors_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = vec![("x".to_string(), vec![1]), ("y".to_string(), vec![1])];
        let mut writer = SafetensorsWriter::create(&path, &tensors).unwrap();
        assert!(writer.write_tensor("y", &[0.0]).is_err());

        let mut writer = SafetensorsWriter::create(&path, &tensors).unwrap();
        writer.write_tensor("x", &[0.0]).unwrap();
        assert!(writer.finish().is_err());
    }
}
