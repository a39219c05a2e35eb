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

use tessera_kernels::{line_vec, LineVec};

use crate::error::ModelError;

/// Key/value block pools of every layer on one rank.
#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    /// Key/value width (kv heads x head_dim) of each layer.
    widths: Vec<usize>,
    /// Each layer's keys and values, line-aligned (the attention kernels read rows of
    /// 16-float vectors from them).
    k: Vec<LineVec<f32>>,
    v: Vec<LineVec<f32>>,
}

impl PagedKvCache {
    /// Allocates `num_blocks` blocks of `block_size` tokens for layers of the given widths.
    ///
    /// Every page is touched here, so resident memory is what the block count says from
    /// the start and never grows while serving.
    pub fn new(widths: Vec<usize>, num_blocks: usize, block_size: usize) -> Self {
        let alloc = |w: &usize| {
            let mut buf = line_vec(0.0f32, num_blocks * block_size * w);
            // The optimizer may turn an allocation filled with zeros into a zeroed one,
            // which is mapped lazily; a volatile store makes each page resident.
            for x in buf.iter_mut().step_by(1024) {
                // SAFETY: `x` is a valid, aligned, exclusive reference into `buf`.
                unsafe { std::ptr::write_volatile(x, 0.0) };
            }
            buf
        };
        let k = widths.iter().map(alloc).collect();
        let v = widths.iter().map(alloc).collect();
        Self {
            block_size,
            num_blocks,
            widths,
            k,
            v,
        }
    }

    /// Bytes one block takes on a rank whose layers have these widths (keys and values).
    pub fn block_bytes(widths: &[usize], block_size: usize) -> usize {
        widths.iter().sum::<usize>() * block_size * 2 * std::mem::size_of::<f32>()
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        Self::block_bytes(&self.widths, self.block_size) * self.num_blocks
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

    /// Writes one token's keys and values of layer `layer` at `slot`.
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let w = self.widths[layer];
        self.k[layer][slot * w..(slot + 1) * w].copy_from_slice(k);
        self.v[layer][slot * w..(slot + 1) * w].copy_from_slice(v);
    }

    /// Keys and values of layer `layer` (`[block][slot][kv head][d]`).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
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
    }
}
