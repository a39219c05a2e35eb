//! The key/value block pool of every layer on one GPU, in f32 or bf16.
//!
//! ```text
//!   k[layer], v[layer]   [block][slot][kv head][d]      blocks 0..num_blocks: the engine's
//!                                                       block num_blocks: the trash block
//! ```
//!
//! The trash block is in no sequence's table: the padded rows of a CUDA graph write and
//! read there.

use cudarc::driver::CudaSlice;

use crate::device::Gpu;
use crate::error::{ensure, CudaError};

/// Storage of the keys and values: the engine's [`KvDtype`]. f32 pools are read by
/// `cuda/paged_attention.cu` (tiled prefill, split decode); bf16 pools (rounded to nearest
/// even, f32 accumulation) by `cuda/decode_attention.cu` for decode rows (each key/value
/// head once per GQA group) and `prefill_attention_bf16` for prompt rows.
pub use tessera_model::KvDtype;

/// One layer's pool in its storage.
pub(crate) enum LayerPool<'a> {
    /// f32 keys and values.
    F32(&'a mut CudaSlice<f32>, &'a mut CudaSlice<f32>),
    /// bf16 bits of keys and values.
    Bf16(&'a mut CudaSlice<u16>, &'a mut CudaSlice<u16>),
}

enum Pool {
    F32(Vec<(CudaSlice<f32>, CudaSlice<f32>)>),
    Bf16(Vec<(CudaSlice<u16>, CudaSlice<u16>)>),
}

/// The key/value block pool of every layer on one GPU (see the module's picture).
pub struct CudaKvCache {
    pool: Pool,
    block_size: usize,
    num_blocks: usize,
}

impl CudaKvCache {
    /// Allocates `num_blocks` blocks (and the trash block) of `block_size` tokens for
    /// layers of the given key/value widths.
    pub fn new(
        gpu: &Gpu,
        widths: &[usize],
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
    ) -> Result<Self, CudaError> {
        ensure(block_size > 0 && num_blocks > 0, "CudaKvCache", || {
            "empty pool".into()
        })?;
        let len = |w: usize| (num_blocks + 1) * block_size * w;
        let pool = match dtype {
            KvDtype::F32 => Pool::F32(
                widths
                    .iter()
                    .map(|&w| Ok((gpu.zeros(len(w))?, gpu.zeros(len(w))?)))
                    .collect::<Result<_, CudaError>>()?,
            ),
            KvDtype::Bf16 => Pool::Bf16(
                widths
                    .iter()
                    .map(|&w| Ok((gpu.zeros(len(w))?, gpu.zeros(len(w))?)))
                    .collect::<Result<_, CudaError>>()?,
            ),
        };
        Ok(Self {
            pool,
            block_size,
            num_blocks,
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool (the trash block not counted).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The block padded rows use (in no sequence's table).
    pub fn trash_block(&self) -> u32 {
        self.num_blocks as u32
    }

    /// The storage of the keys and values.
    pub fn dtype(&self) -> KvDtype {
        match self.pool {
            Pool::F32(_) => KvDtype::F32,
            Pool::Bf16(_) => KvDtype::Bf16,
        }
    }

    /// Layer `l`'s keys and values.
    pub(crate) fn layer(&mut self, l: usize) -> Result<LayerPool<'_>, CudaError> {
        let missing = || CudaError::Shape {
            op: "kv cache",
            reason: format!("no layer {l} in the pool"),
        };
        Ok(match &mut self.pool {
            Pool::F32(layers) => {
                let (k, v) = layers.get_mut(l).ok_or_else(missing)?;
                LayerPool::F32(k, v)
            }
            Pool::Bf16(layers) => {
                let (k, v) = layers.get_mut(l).ok_or_else(missing)?;
                LayerPool::Bf16(k, v)
            }
        })
    }

    /// A digest of every layer's pool addresses and the block geometry: a captured graph
    /// is valid only for the pool it was captured with.
    pub(crate) fn digest(&self, gpu: &Gpu) -> u64 {
        let ptrs: Vec<u64> = match &self.pool {
            Pool::F32(l) => l
                .iter()
                .flat_map(|(k, v)| [gpu.ptr(k), gpu.ptr(v)])
                .collect(),
            Pool::Bf16(l) => l
                .iter()
                .flat_map(|(k, v)| [gpu.ptr(k), gpu.ptr(v)])
                .collect(),
        };
        let words = ptrs
            .into_iter()
            .chain([self.block_size as u64, self.num_blocks as u64]);
        words.fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
            (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(7)
        })
    }
}
