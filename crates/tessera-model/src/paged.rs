//! One rank's paged key/value cache: a pool of fixed-size blocks per layer.
//!
//! ```text
//!   layer l:  k[block][slot in block][kv head][d]      (v likewise)
//!
//!   a sequence's block table  [7, 2, 9]   with block_size 16:
//!     positions  0..16 -> block 7,  16..32 -> block 2,  32..48 -> block 9
//!     position p lives at slot  table[p / 16] * 16 + p % 16
//! ```
//!
//! The memory is allocated once, when the engine starts; blocks are handed out by the
//! engine's block manager, never by the model. Every rank holds the same block ids (one
//! block table per sequence serves all ranks), each with its own key/value heads.

use half::bf16;
use tessera_kernels::{line_vec, LineVec};

use crate::error::ModelError;

/// How a key/value cache stores its rows (`--kv-dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvDtype {
    /// 32-bit floats: exactly the values the projections produced.
    F32,
    /// bfloat16, rounded to nearest even when written and widened exactly when read (the
    /// sums stay f32): half the bytes to hold and to read per decode step.
    Bf16,
}

impl KvDtype {
    /// Parses `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// One layer's keys and values, borrowed in their storage type.
#[derive(Clone, Copy, Debug)]
pub enum KvLayer<'a> {
    /// f32 rows `[block][slot][kv head][d]`.
    F32(&'a [f32], &'a [f32]),
    /// bf16 rows, same layout.
    Bf16(&'a [bf16], &'a [bf16]),
}

/// The pools of every layer in one storage type (line-aligned: the attention kernels read
/// rows of 16-value vectors from them).
#[derive(Debug)]
enum Pools {
    F32 {
        k: Vec<LineVec<f32>>,
        v: Vec<LineVec<f32>>,
    },
    Bf16 {
        k: Vec<LineVec<bf16>>,
        v: Vec<LineVec<bf16>>,
    },
}

/// Allocates one layer's pool of `len` values and makes every page resident.
fn resident_pool<T: Copy + Default>(len: usize) -> LineVec<T> {
    let mut buf = line_vec(T::default(), len);
    // The optimizer may turn an allocation filled with zeros into a zeroed one, which is
    // mapped lazily; a volatile store makes each page resident.
    for x in buf.iter_mut().step_by(1024) {
        // SAFETY: `x` is a valid, aligned, exclusive reference into `buf`.
        unsafe { std::ptr::write_volatile(x, T::default()) };
    }
    buf
}

/// Key/value block pools of every layer on one rank.
#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    /// Key/value width (kv heads x head_dim) of each layer.
    widths: Vec<usize>,
    dtype: KvDtype,
    pools: Pools,
}

impl PagedKvCache {
    /// Allocates `num_blocks` f32 blocks of `block_size` tokens for layers of the given
    /// widths (see [`PagedKvCache::with_dtype`]).
    pub fn new(widths: Vec<usize>, num_blocks: usize, block_size: usize) -> Self {
        Self::with_dtype(widths, num_blocks, block_size, KvDtype::F32)
    }

    /// Allocates `num_blocks` blocks of `block_size` tokens stored as `dtype`.
    ///
    /// Every page is touched here, so resident memory is what the block count says from
    /// the start and never grows while serving.
    pub fn with_dtype(
        widths: Vec<usize>,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
    ) -> Self {
        let lens = widths.iter().map(|w| num_blocks * block_size * w);
        let pools = match dtype {
            KvDtype::F32 => Pools::F32 {
                k: lens.clone().map(resident_pool).collect(),
                v: lens.map(resident_pool).collect(),
            },
            KvDtype::Bf16 => Pools::Bf16 {
                k: lens.clone().map(resident_pool).collect(),
                v: lens.map(resident_pool).collect(),
            },
        };
        Self {
            block_size,
            num_blocks,
            widths,
            dtype,
            pools,
        }
    }

    /// Bytes one block takes on a rank whose layers have these widths (keys and values).
    pub fn block_bytes(widths: &[usize], block_size: usize, dtype: KvDtype) -> usize {
        widths.iter().sum::<usize>() * block_size * 2 * dtype.bytes()
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// How the rows are stored.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        Self::block_bytes(&self.widths, self.block_size, self.dtype) * self.num_blocks
    }

    /// Fails unless `table` covers positions `0..end` with valid block ids.
    pub fn check_table(&self, table: &[u32], end: usize) -> Result<(), ModelError> {
        if table.len() * self.block_size < end {
            return Err(ModelError::BadBatch(format!(
                "a block table of {} blocks ({} tokens) cannot hold {end} positions",
                table.len(),
                table.len() * self.block_size
            )));
        }
        if let Some(&b) = table.iter().find(|&&b| b as usize >= self.num_blocks) {
            return Err(ModelError::BadBatch(format!(
                "block id {b} is outside the pool of {} blocks",
                self.num_blocks
            )));
        }
        Ok(())
    }

    /// The cache slot of position `pos` of a sequence with block table `table`.
    pub fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    /// Writes one token's keys and values of layer `layer` at `slot` (rounded to nearest
    /// even for a bf16 cache).
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let w = self.widths[layer];
        let at = slot * w..(slot + 1) * w;
        match &mut self.pools {
            Pools::F32 { k: kp, v: vp } => {
                kp[layer][at.clone()].copy_from_slice(k);
                vp[layer][at].copy_from_slice(v);
            }
            Pools::Bf16 { k: kp, v: vp } => {
                for (dst, src) in [(&mut kp[layer][at.clone()], k), (&mut vp[layer][at], v)] {
                    for (d, &x) in dst.iter_mut().zip(src) {
                        *d = bf16::from_f32(x);
                    }
                }
            }
        }
    }

    /// Keys and values of layer `layer` (`[block][slot][kv head][d]`).
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match &self.pools {
            Pools::F32 { k, v } => KvLayer::F32(&k[layer], &v[layer]),
            Pools::Bf16 { k, v } => KvLayer::Bf16(&k[layer], &v[layer]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap()
            * 4096
    }

    #[test]
    fn the_pool_is_resident_once_allocated() {
        let before = resident();
        let cache = PagedKvCache::new(vec![256; 4], 1024, 16);
        let grown = resident() - before;
        assert_eq!(cache.bytes(), 128 << 20);
        assert!(
            grown >= cache.bytes() * 9 / 10,
            "only {grown} of {} bytes resident",
            cache.bytes()
        );
        let before = resident();
        let half = PagedKvCache::with_dtype(vec![256; 4], 1024, 16, KvDtype::Bf16);
        let grown = resident() - before;
        assert_eq!(half.bytes(), 64 << 20);
        assert!(
            grown >= half.bytes() * 9 / 10,
            "only {grown} bytes resident"
        );
    }

    #[test]
    fn a_bf16_cache_rounds_to_nearest_even_and_reads_back_in_place() {
        let mut cache = PagedKvCache::with_dtype(vec![4, 8], 3, 2, KvDtype::Bf16);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0);
        // 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
        let k = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 1e-3];
        let v = [0.1f32, -0.2, 3.0e5, -7.0];
        cache.write(0, 5, &k, &v);
        let KvLayer::Bf16(kc, vc) = cache.layer(0) else {
            panic!("a bf16 cache lends bf16 rows");
        };
        let kr: Vec<f32> = kc[20..24].iter().map(|x| x.to_f32()).collect();
        assert_eq!(kr[..2], [1.0, 1.0 + 1.0 / 64.0]);
        assert_eq!(kr[2], -2.5);
        for (got, want) in vc[20..24].iter().zip(v) {
            assert_eq!(*got, bf16::from_f32(want));
        }
        assert!(
            kc[..20].iter().all(|x| x.to_f32() == 0.0),
            "other slots untouched"
        );
        assert_eq!(KvDtype::parse("bf16"), Some(KvDtype::Bf16));
        assert_eq!(KvDtype::parse("f16"), None);
    }
}
