//! The ops a Llama block needs, behind one trait.
//!
//! The forward pass ([`crate::RankModel`]) is written against [`Backend`] only, the way
//! candle's `BackendStorage` describes one tensor over many devices: a backend owns its
//! buffer type (host `Vec<f32>` for the CPU, device slices for CUDA), its weight storage,
//! its key/value cache and its communicator, and the model drives them through the ops
//! below. Every op works on the first rows of a buffer, so the buffers of a step can be
//! kept and reused by later, smaller steps (see [`crate::Workspace`]).

use std::ops::Range;

use tessera_kernels::{BlockFormat, BlockTensor, ChunkOutput, LineVec, PackedMatrix, BLOCK, LINE};
use tessera_plan::{ReduceMode, Span};

use crate::error::ModelError;
use crate::step_seq::StepSeq;

/// Weight storage precision on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit floats (the CPU default, exact to the reference).
    F32,
    /// bfloat16 (half the memory traffic; widened exactly to f32 in the kernels).
    Bf16,
    /// GGML Q8_0 blocks (CPU only; 34 bytes per 32 weights).
    Q8_0,
    /// GGML Q4_0 blocks (CPU only; 18 bytes per 32 weights).
    Q4_0,
    /// GGML Q4_1 blocks (CPU only; 20 bytes per 32 weights, the shipped GGUF's format).
    Q4_1,
}

impl WeightDtype {
    /// Parses `f32`, `bf16`, `q8_0`, `q4_0` or `q4_1`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "q8_0" => Some(Self::Q8_0),
            "q4_0" => Some(Self::Q4_0),
            "q4_1" => Some(Self::Q4_1),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
        }
    }

    /// The GGML block format of a quantized dtype (`None` for f32 and bf16).
    pub fn block_format(self) -> Option<BlockFormat> {
        match self {
            Self::F32 | Self::Bf16 => None,
            Self::Q8_0 => Some(BlockFormat::Q8_0),
            Self::Q4_0 => Some(BlockFormat::Q4_0),
            Self::Q4_1 => Some(BlockFormat::Q4_1),
        }
    }

    /// Bytes per stored element, rounded up (a block format's exact size is
    /// [`WeightDtype::storage_bytes`]).
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::Q8_0 => 2,
            Self::Q4_0 | Self::Q4_1 => 1,
        }
    }

    /// Bytes `elems` weights take in this dtype (blocks of 32 for the block formats).
    pub fn storage_bytes(self, elems: usize) -> usize {
        match self.block_format() {
            Some(f) => elems.div_ceil(BLOCK) * f.block_bytes(),
            None => elems * self.size(),
        }
    }
}

/// A weight's values as the loader read them: f32 (stored as the load's dtype asks) or
/// GGML blocks, used as stored.
#[derive(Debug)]
pub enum WeightValues {
    /// Row-major f32 values.
    F32(Vec<f32>),
    /// Block-quantized rows.
    Blocks(BlockTensor),
}

/// A CPU weight matrix `[rows, cols]` (Hugging Face layout): packed once at load into the
/// kernels' panels, and, for an embedding table, its rows kept for lookups.
///
/// ```text
///   matmul weight      packed: Some(panels)        table: None
///   embedding          packed: None                table: Some(rows)
///   tied embedding     packed: Some(block panels)  table: Some(block rows)   (block dtypes)
///                      packed: Some(f32/bf16)      table: None   (lookups read the panels)
/// ```
#[derive(Debug)]
pub struct Matrix {
    packed: Option<PackedMatrix>,
    table: Option<Table>,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// Row-major storage of an embedding table, for lookups.
#[derive(Debug)]
enum Table {
    F32(Vec<f32>),
    Bf16(LineVec<half::bf16>),
    Blocks(BlockTensor),
}

impl Matrix {
    /// Packs `data` (`rows * cols` f32 values) as `dtype` (a block dtype quantizes them
    /// with ggml's reference rounding).
    pub fn new(
        data: Vec<f32>,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Self, ModelError> {
        let packed = match dtype.block_format() {
            Some(f) => PackedMatrix::pack_blocks(&BlockTensor::quantize(f, &data, rows, cols)?),
            None if dtype == WeightDtype::Bf16 => {
                PackedMatrix::pack_bf16(&to_bf16(&data), rows, cols)?
            }
            None => PackedMatrix::pack_f32(&data, rows, cols)?,
        };
        Ok(Self::packed(packed))
    }

    /// Packs GGML blocks as they are.
    pub fn blocks(t: &BlockTensor) -> Self {
        Self::packed(PackedMatrix::pack_blocks(t))
    }

    /// A matrix of packed panels.
    fn packed(packed: PackedMatrix) -> Self {
        let (rows, cols) = (packed.rows(), packed.cols());
        Self {
            packed: Some(packed),
            table: None,
            rows,
            cols,
        }
    }

    /// An embedding table of `values` (`rows * cols`, f32 stored as `dtype`, or blocks
    /// stored as they are); `head`: it is also multiplied as the tied output head.
    pub fn table(
        values: WeightValues,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        head: bool,
    ) -> Result<Self, ModelError> {
        let table = match (values, dtype.block_format()) {
            (WeightValues::Blocks(t), _) => Table::Blocks(t),
            (WeightValues::F32(v), Some(_)) => {
                // A table from f32 values is kept as Q8_0, the GGUF embedding's format.
                Table::Blocks(BlockTensor::quantize(BlockFormat::Q8_0, &v, rows, cols)?)
            }
            // A tied f32/bf16 head is kept as panels only: a batched head then needs no
            // packing per step, and lookups read a row back from the panels.
            (WeightValues::F32(v), None) if head => return Self::new(v, rows, cols, dtype),
            (WeightValues::F32(v), None) if dtype == WeightDtype::Bf16 => Table::Bf16(to_bf16(&v)),
            (WeightValues::F32(v), None) => Table::F32(v),
        };
        let packed = match &table {
            Table::Blocks(t) if head => Some(PackedMatrix::pack_blocks(t)),
            _ => None,
        };
        Ok(Self {
            packed,
            table: Some(table),
            rows,
            cols,
        })
    }

    /// The packed panels, if the matrix has them.
    pub fn packed_ref(&self) -> Option<&PackedMatrix> {
        self.packed.as_ref()
    }

    /// Row `r` of a table widened to f32 into `out` (embedding lookups; a block row is
    /// decoded alone).
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.table {
            Some(Table::F32(v)) => out.copy_from_slice(&v[range]),
            Some(Table::Bf16(v)) => {
                for (o, x) in out.iter_mut().zip(&v[range]) {
                    *o = x.to_f32();
                }
            }
            Some(Table::Blocks(t)) => out.copy_from_slice(&t.slice_rows(r..r + 1)?.dequantize()),
            None => match &self.packed {
                Some(p) => p.row_into(r, out)?,
                None => {
                    return Err(ModelError::Device {
                        backend: "cpu",
                        message: "an embedding lookup on a matrix loaded without its rows".into(),
                    })
                }
            },
        }
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let table = match &self.table {
            Some(Table::F32(v)) => v.len() * 4,
            Some(Table::Bf16(v)) => v.len() * 2,
            Some(Table::Blocks(t)) => t.bytes().len(),
            None => 0,
        };
        table + self.packed.as_ref().map_or(0, PackedMatrix::storage_bytes)
    }
}

/// Rounds f32 values to bf16.
fn to_bf16(v: &[f32]) -> LineVec<half::bf16> {
    LineVec::from_iter(LINE, v.iter().map(|&x| half::bf16::from_f32(x)))
}

/// A weight matrix on a backend with its shape (`rows` output features of `cols` inputs).
pub struct Weight<B: Backend + ?Sized> {
    /// The backend's storage of the matrix.
    pub data: B::Matrix,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// What a plan asks of a backend, checked once at load ([`Backend::supports`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanNeeds {
    /// How row-parallel partial sums are combined.
    pub reduce: ReduceMode,
    /// Whether token rows are sharded between the split layers.
    pub sequence_parallel: bool,
    /// Ranks in the group.
    pub world: usize,
}

/// One layer's attention heads on this rank, as the attention op reads them.
pub struct HeadLayout<'a, B: Backend + ?Sized> {
    /// Layer index (which cache layer to write and read).
    pub layer: usize,
    /// Local query heads.
    pub q_heads: usize,
    /// Local key/value heads.
    pub kv_heads: usize,
    /// Width of every head.
    pub head_dim: usize,
    /// For each local query head, its local key/value head (host copy).
    pub kv_index: &'a [usize],
    /// The same map in the backend's storage.
    pub kv_index_dev: &'a B::Index,
    /// Sliding attention window, if any.
    pub window: Option<usize>,
    /// Rotary table.
    pub rope: &'a B::Rope,
}

/// The ops of a Llama block on one device, over buffers the backend owns.
///
/// Buffer arguments are at least as long as the rows an op is told to touch; ops read and
/// write only those rows. Collectives take the backend's communicator.
pub trait Backend: Send + Sync {
    /// An f32 activation buffer.
    type Buf: Send;
    /// A weight matrix in its storage dtype.
    type Matrix: Send + Sync;
    /// An f32 weight vector (norm weights, biases).
    type Vector: Send + Sync;
    /// A per-layer head map (local query head -> local key/value head).
    type Index: Send + Sync;
    /// A rotary embedding table.
    type Rope: Send + Sync;
    /// The paged key/value cache of every layer.
    type Cache;
    /// The communicator the collectives run on.
    type Comm: ?Sized;
    /// A step's inputs (token ids, positions, block tables, picked rows) as the device
    /// reads them, refilled by [`Backend::prepare`] each step.
    type Step: Default + Send;

    /// The backend's name, for errors ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// Refuses, at load, a plan this backend cannot run (a reduce mode, sequence
    /// parallelism) with [`ModelError::Unsupported`].
    fn supports(&self, needs: &PlanNeeds) -> Result<(), ModelError>;
    /// Stores `data` (`rows * cols` row-major f32) as a weight matrix of `dtype`.
    fn matrix(
        &self,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Self::Matrix, ModelError>;
    /// Stores GGML blocks as a weight matrix, used as stored (`--dtype q8_0|q4_0|q4_1`);
    /// a backend without block kernels refuses them.
    fn block_matrix(&self, t: BlockTensor) -> Result<Self::Matrix, ModelError> {
        Err(ModelError::Unsupported {
            backend: self.name(),
            what: format!("{:?} block-quantized weights", t.format()),
            hint: "quantized weights run on --device cpu; use --dtype f32 or bf16 here",
        })
    }
    /// Stores an embedding table `[rows, cols]` whose rows [`Backend::embed`] looks up;
    /// `head`: it is also the tied output head. By default an ordinary matrix.
    fn table(
        &self,
        values: WeightValues,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        head: bool,
    ) -> Result<Self::Matrix, ModelError> {
        let _ = head;
        match values {
            WeightValues::F32(v) => self.matrix(v, rows, cols, dtype),
            WeightValues::Blocks(t) => self.block_matrix(t),
        }
    }
    /// Bytes a matrix holds.
    fn matrix_bytes(m: &Self::Matrix) -> usize;
    /// Stores an f32 vector.
    fn vector(&self, data: Vec<f32>) -> Result<Self::Vector, ModelError>;
    /// Stores a head map.
    fn index(&self, map: &[usize]) -> Result<Self::Index, ModelError>;
    /// Builds the rotary table for `head_dim` and `positions` positions.
    fn rope_table(
        &self,
        head_dim: usize,
        positions: usize,
        inv_freq: &[f32],
    ) -> Result<Self::Rope, ModelError>;
    /// A buffer of `len` f32 values (contents unspecified until an op writes them).
    fn alloc(&self, len: usize) -> Result<Self::Buf, ModelError>;
    /// Capacity of a buffer in f32 values.
    fn capacity(buf: &Self::Buf) -> usize;
    /// The first `len` values of a buffer, on the host.
    fn download(&self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>, ModelError>;

    /// Loads a step's inputs into `step`: the token ids, positions and block tables of
    /// `seqs`, and `picks`, the local rows whose logits the step returns.
    fn prepare(
        &self,
        step: &mut Self::Step,
        cache: &Self::Cache,
        seqs: &[StepSeq],
        picks: &[usize],
    ) -> Result<(), ModelError>;
    /// Embedding rows of the step's tokens `rows` (`span` is this rank's vocabulary slice
    /// of `table`; other tokens get zero rows) into `out`.
    fn embed(
        &self,
        step: &Self::Step,
        rows: Range<usize>,
        table: &Weight<Self>,
        span: Span,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `y[m, w.rows] = x[m, w.cols] · wᵀ (+ bias)`, with the fixed reduction order over k.
    fn matmul(
        &self,
        x: &Self::Buf,
        m: usize,
        w: &Weight<Self>,
        bias: Option<&Self::Vector>,
        y: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `y = x · wᵀ` with the reduction cut into fixed chunks of `chunk` columns (see
    /// [`tessera_kernels::matmul_chunked`]).
    fn matmul_chunked(
        &self,
        x: &Self::Buf,
        m: usize,
        w: &Weight<Self>,
        chunk: usize,
        output: ChunkOutput,
        y: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `out = rmsnorm(x) * weight` for `rows` rows of the weight's width.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        rows: usize,
        weight: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `residual += delta`, then `out = rmsnorm(residual) * weight`, for `rows` rows.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        delta: &Self::Buf,
        rows: usize,
        weight: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// The attention of one layer over `qkv` (`rows` rows of `[q | k | v]` of this rank's
    /// heads): rotary embedding of q and k, keys and values written into the cache at the
    /// step's positions, causal attention of each sequence over its blocks into `out`
    /// (`rows` rows of `q_heads * head_dim`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        qkv: &mut Self::Buf,
        rows: usize,
        heads: &HeadLayout<'_, Self>,
        cache: &mut Self::Cache,
        step: &Self::Step,
        seqs: &[StepSeq],
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `out[r] = silu(gate[r]) * up[r]` for `rows` rows of `gate_up = [gate | up]`, each
    /// half `inter` wide.
    fn silu_mul(
        &self,
        gate_up: &Self::Buf,
        rows: usize,
        inter: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `x[..len] += delta[..len]`.
    fn add(&self, x: &mut Self::Buf, delta: &Self::Buf, len: usize) -> Result<(), ModelError>;
    /// Copies the rows `picks` (given to [`Backend::prepare`]) of `x` (`width` wide) into
    /// `out`, in order.
    fn pick_rows(
        &self,
        x: &Self::Buf,
        width: usize,
        picks: &[usize],
        step: &Self::Step,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;

    /// Sums `buf[..len]` over the ranks (any order).
    fn all_reduce_sum(
        &self,
        comm: &mut Self::Comm,
        buf: &mut Self::Buf,
        len: usize,
    ) -> Result<(), ModelError>;
    /// Folds every rank's partials (`partials[..len]`) in the fixed order into
    /// `out[..out_len]` (see `Communicator::all_reduce_ordered`).
    fn all_reduce_ordered(
        &self,
        comm: &mut Self::Comm,
        partials: &Self::Buf,
        len: usize,
        out: &mut Self::Buf,
        out_len: usize,
    ) -> Result<(), ModelError>;
    /// Folds every rank's partials of a `full`-long result in the fixed order and keeps
    /// `keep` of it in `out` (see `Communicator::reduce_scatter_ordered`).
    fn reduce_scatter_ordered(
        &self,
        comm: &mut Self::Comm,
        partials: &Self::Buf,
        len: usize,
        full: usize,
        keep: Range<usize>,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// Concatenates every rank's `local[..len]` (lengths may differ) in rank order into
    /// `out[..out_len]`.
    fn all_gather(
        &self,
        comm: &mut Self::Comm,
        local: &Self::Buf,
        len: usize,
        out: &mut Self::Buf,
        out_len: usize,
    ) -> Result<(), ModelError>;
    /// Gathers every rank's logits (`rows` rows of its vocabulary slice, `spans` in rank
    /// order) into `rows` full-vocabulary rows in `out`; `scratch` holds the exchange.
    #[allow(clippy::too_many_arguments)]
    fn gather_vocab(
        &self,
        comm: &mut Self::Comm,
        local: &Self::Buf,
        rows: usize,
        spans: &[Span],
        scratch: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
}
