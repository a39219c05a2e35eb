//! Reading weights from Hugging Face safetensors files, one rank's slice at a time.
//!
//! Files are memory-mapped; a rank copies out only the rows or columns its [`Role`] names,
//! converting f16 / bf16 to f32 as it goes, so a 4-rank load never copies the whole model
//! into every rank (untouched pages of the mapping are never read).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use tessera_plan::Role;

use crate::blocks::BlockFile;
use crate::error::ModelError;

/// One memory-mapped safetensors file.
pub(crate) struct MappedFile {
    pub(crate) path: PathBuf,
    pub(crate) map: Mmap,
    /// Offset of the data section (8 + header length).
    pub(crate) data_start: usize,
    pub(crate) tensors: HashMap<String, TensorInfo>,
    /// The header's `__metadata__` (empty when absent).
    pub(crate) metadata: HashMap<String, String>,
}

/// The safetensors files of one model directory (single file or sharded with an index).
pub struct WeightFiles {
    dir: PathBuf,
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// `model.blocks.safetensors`, when the directory has it (quantized dtypes).
    blocks: Option<BlockFile>,
    /// Seed of generated values ([`WeightFiles::random`]) instead of files.
    random: Option<u64>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or every file listed by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                    path: index_path.clone(),
                    reason: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    reason: "no weight_map object".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            if let Some(missing) = files.iter().find(|f| !dir.join(f).is_file()) {
                return Err(ModelError::MissingShard {
                    index: index_path,
                    file: missing.clone(),
                    dir: dir.to_path_buf(),
                });
            }
            files
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut files = Vec::with_capacity(names.len());
        let mut index = HashMap::new();
        for name in names {
            let file = map_file(&dir.join(&name))?;
            for tensor in file.tensors.keys() {
                index.insert(tensor.clone(), files.len());
            }
            files.push(file);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
            blocks: BlockFile::open(dir)?,
            random: None,
        })
    }

    /// A source of seeded uniform values instead of files, for benchmarks of shapes too
    /// large to write: matrices in ±2/sqrt(cols), vectors (norms, biases) in 1 ± 0.2. A
    /// value depends only on the seed, the tensor's name and its place in the full
    /// tensor, so every rank's slice is a slice of one model.
    pub fn random(seed: u64) -> Self {
        Self {
            dir: PathBuf::from("<random weights>"),
            files: Vec::new(),
            index: HashMap::new(),
            blocks: None,
            random: Some(seed),
        }
    }

    /// The block-quantized tensors of `model.blocks.safetensors`, if present.
    pub(crate) fn blocks(&self) -> Option<&BlockFile> {
        self.blocks.as_ref()
    }

    /// True when the files hold a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.index.contains_key(name)
    }

    /// Loads the slice of tensor `name` selected by `role`, as row-major f32.
    ///
    /// `full` is the shape the config implies (`[len, 1]` for vectors); a mismatch with the
    /// file is an error naming the tensor.
    pub fn load(&self, name: &str, full: [usize; 2], role: Role) -> Result<Vec<f32>, ModelError> {
        if let Some(seed) = self.random {
            return Ok(random_slice(seed, name, full, role));
        }
        let file = self
            .index
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| ModelError::MissingWeight {
                name: name.to_string(),
                dir: self.dir.clone(),
            })?;
        let info = &file.tensors[name];
        let shape = &info.shape;
        let matches = match shape.as_slice() {
            [r, c] => [*r, *c] == full,
            [n] => full == [*n, 1],
            _ => false,
        };
        if !matches {
            let expected = if full[1] == 1 {
                vec![full[0]]
            } else {
                full.to_vec()
            };
            return Err(ModelError::WeightShape {
                name: name.to_string(),
                expected,
                got: shape.clone(),
            });
        }
        let elem = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(ModelError::WeightDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (begin, end) = info.data_offsets;
        let bytes = &file.map[file.data_start + begin..file.data_start + end];
        let [rows, cols] = full;
        let (row_span, col_span) = match role {
            Role::Replicated => (0..rows, 0..cols),
            Role::SplitRows { span } => (span.start..span.end, 0..cols),
            Role::PartialSum { span } => (0..rows, span.start..span.end),
        };
        if row_span.end > rows || col_span.end > cols {
            return Err(ModelError::WeightShape {
                name: format!("{name} (slice {row_span:?} x {col_span:?})"),
                expected: full.to_vec(),
                got: shape.clone(),
            });
        }
        let mut out = Vec::with_capacity(row_span.len() * col_span.len());
        for r in row_span {
            let start = (r * cols + col_span.start) * elem;
            let stop = (r * cols + col_span.end) * elem;
            convert(&bytes[start..stop], info.dtype, &mut out);
        }
        Ok(out)
    }
}

/// The slice `role` selects of the generated tensor `name` (see [`WeightFiles::random`]).
fn random_slice(seed: u64, name: &str, full: [usize; 2], role: Role) -> Vec<f32> {
    let [rows, cols] = full;
    let (row_span, col_span) = match role {
        Role::Replicated => (0..rows, 0..cols),
        Role::SplitRows { span } => (span.start..span.end.min(rows), 0..cols),
        Role::PartialSum { span } => (0..rows, span.start..span.end.min(cols)),
    };
    let tensor = name
        .bytes()
        .fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| mix(h ^ u64::from(b)));
    let (scale, offset) = if cols == 1 {
        (0.2, 1.0)
    } else {
        (2.0 / (cols as f32).sqrt(), 0.0)
    };
    let width = col_span.len();
    let mut out = vec![0.0f32; row_span.len() * width];
    if out.is_empty() {
        return out;
    }
    // Billions of values for an 8B shape: rows are filled on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = row_span.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (i, chunk) in out.chunks_mut(per * width).enumerate() {
            let (first, cols) = (row_span.start + i * per, col_span.clone());
            scope.spawn(move || {
                for (k, row) in chunk.chunks_mut(width).enumerate() {
                    let r = first + k;
                    for (v, c) in row.iter_mut().zip(cols.clone()) {
                        let bits = mix(tensor ^ (r * full[1] + c) as u64);
                        // 24 random bits as a uniform in [-1, 1).
                        let u = (bits >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                        *v = offset + scale * u;
                    }
                }
            });
        }
    });
    out
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn convert(bytes: &[u8], dtype: Dtype, out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// Maps a safetensors file and reads its header.
pub(crate) fn map_file(path: &Path) -> Result<MappedFile, ModelError> {
    let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only and Tessera never writes model files while serving;
    // another process truncating the file under us is outside what we can defend against
    // (the same contract every mmap-based loader has).
    let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
    let bad = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let (header_len, metadata) = SafeTensors::read_metadata(&map[..]).map_err(|e| {
        bad(format!(
            "{e}: the file is truncated or corrupt ({} bytes); pull or download it again",
            map.len()
        ))
    })?;
    let data_start = 8 + header_len;
    let tensors: HashMap<String, TensorInfo> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect();
    let data_len = map.len().saturating_sub(data_start);
    for (name, info) in &tensors {
        if info.data_offsets.1 > data_len {
            return Err(bad(format!(
                "tensor '{name}' ends at byte {} of the data section but the file holds only {data_len} bytes (truncated?)",
                info.data_offsets.1
            )));
        }
    }
    Ok(MappedFile {
        path: path.to_path_buf(),
        map,
        data_start,
        tensors,
        metadata: metadata.metadata().clone().unwrap_or_default(),
    })
}

impl std::fmt::Debug for WeightFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFiles")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_plan::{ModelShape, Span, WeightKind};

    fn shape() -> ModelShape {
        ModelShape {
            hidden: 12,
            layers: 1,
            heads: 3,
            kv_heads: 1,
            head_dim: 4,
            intermediate: 10,
            vocab: 17,
            tied_embeddings: false,
            qkv_bias: true,
        }
    }

    #[test]
    fn random_weights_slice_one_model_and_depend_on_seed_and_name() {
        let files = WeightFiles::random(7);
        let full = files.load("w", [6, 4], Role::Replicated).unwrap();
        let rows = files
            .load(
                "w",
                [6, 4],
                Role::SplitRows {
                    span: Span::new(2, 5),
                },
            )
            .unwrap();
        assert_eq!(rows, full[8..20]);
        let cols = files
            .load(
                "w",
                [6, 4],
                Role::PartialSum {
                    span: Span::new(1, 3),
                },
            )
            .unwrap();
        let want: Vec<f32> = full.chunks(4).flat_map(|r| r[1..3].to_vec()).collect();
        assert_eq!(cols, want);
        assert!(full.iter().all(|v| v.abs() <= 1.0));
        assert_ne!(full, files.load("v", [6, 4], Role::Replicated).unwrap());
        assert_ne!(
            full,
            WeightFiles::random(8)
                .load("w", [6, 4], Role::Replicated)
                .unwrap()
        );
        let norm = files.load("n", [5, 1], Role::Replicated).unwrap();
        assert!(norm.iter().all(|v| (0.8..=1.2).contains(v)));
    }

    #[test]
    fn row_and_column_slices_are_the_matching_parts_of_the_full_weight() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shape();
        crate::synthetic::write_random_model(tmp.path(), &s, 1, 32).unwrap();
        let files = WeightFiles::open(tmp.path()).unwrap();
        let name = WeightKind::DownProj.hf_name(0);
        let full_shape = WeightKind::DownProj.full_shape(&s);
        let full = files.load(&name, full_shape, Role::Replicated).unwrap();
        let cols = files
            .load(
                &name,
                full_shape,
                Role::PartialSum {
                    span: Span::new(3, 7),
                },
            )
            .unwrap();
        assert_eq!(cols.len(), 12 * 4);
        for r in 0..12 {
            assert_eq!(&cols[r * 4..r * 4 + 4], &full[r * 10 + 3..r * 10 + 7]);
        }
        let rows = files
            .load(
                &name,
                full_shape,
                Role::SplitRows {
                    span: Span::new(5, 9),
                },
            )
            .unwrap();
        assert_eq!(rows, full[5 * 10..9 * 10].to_vec());
        let bias = files
            .load(
                &WeightKind::QBias.hf_name(0),
                WeightKind::QBias.full_shape(&s),
                Role::SplitRows {
                    span: Span::new(4, 8),
                },
            )
            .unwrap();
        assert_eq!(bias.len(), 4);
    }

    #[test]
    fn wrong_shape_and_missing_weight_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        crate::synthetic::write_random_model(tmp.path(), &shape(), 1, 32).unwrap();
        let files = WeightFiles::open(tmp.path()).unwrap();
        let err = files
            .load(&WeightKind::DownProj.hf_name(0), [12, 11], Role::Replicated)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("down_proj") && err.contains("[12, 10]"),
            "{err}"
        );
        let err = files
            .load(
                "model.layers.9.mlp.up_proj.weight",
                [1, 1],
                Role::Replicated,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing") && err.contains("layers.9"), "{err}");
    }

    #[test]
    fn truncated_file_is_rejected_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        crate::synthetic::write_random_model(tmp.path(), &shape(), 1, 32).unwrap();
        let path = tmp.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = WeightFiles::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
