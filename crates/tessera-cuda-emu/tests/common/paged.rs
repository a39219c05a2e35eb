//! A paged-attention batch for the emulation tests: a shuffled block pool, random
//! queries/keys/values in fused qkv rows, the host-side row lists `tessera-cuda` builds
//! (`AttentionRows::fill`, restated) and the CPU reference (`tessera_kernels`).
#![allow(dead_code)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tessera_kernels::{CpuPool, PagedSeq, PagedShape};

use super::randn;

/// Keys per split and most splits, as `tessera_cuda::ops::{SPLIT_KEYS, MAX_SPLITS}`.
pub const SPLIT_KEYS: usize = 256;
/// See [`SPLIT_KEYS`].
pub const MAX_SPLITS: usize = 64;
/// Rows per prefill tile, as `tessera_cuda::ops::PREFILL_TILE_ROWS`.
pub const TILE_ROWS: usize = 16;

/// Head layout of one case.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    /// Head width.
    pub d: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads (hq / hkv query heads share one).
    pub hkv: usize,
    /// Sliding window.
    pub window: Option<usize>,
}

/// One batch: sequences as (first new position, new tokens).
pub struct Batch {
    pub heads: Heads,
    pub seqs: Vec<(usize, usize)>,
    pub block_size: usize,
    pub num_blocks: usize,
    pub tables: Vec<Vec<u32>>,
    pub k_pool: Vec<f32>,
    pub v_pool: Vec<f32>,
    pub qkv: Vec<f32>,
    pub stride: usize,
    pub rows: usize,
    pub kv_index: Vec<i32>,
}

/// Host lists of one step, as `AttentionRows::fill` builds them.
#[derive(Default, Debug)]
pub struct HostRows {
    pub positions: Vec<i32>,
    pub table_off: Vec<i32>,
    pub tables: Vec<i32>,
    pub slots: Vec<i32>,
    pub decode_rows: Vec<i32>,
    pub tile_first: Vec<i32>,
    pub tile_rows: Vec<i32>,
    pub splits: usize,
    pub split_len: usize,
}

impl Batch {
    /// Random pool, shuffled block tables and fused rows `[q | k | v | pad]`.
    pub fn new(
        rng: &mut ChaCha8Rng,
        heads: Heads,
        seqs: Vec<(usize, usize)>,
        block_size: usize,
    ) -> Self {
        let num_blocks = 3 + seqs
            .iter()
            .map(|&(s, t)| (s + t).div_ceil(block_size))
            .sum::<usize>();
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        let tables = seqs
            .iter()
            .map(|&(s, t)| {
                (0..(s + t).div_ceil(block_size))
                    .map(|_| free.pop().unwrap_or(0))
                    .collect()
            })
            .collect();
        let kvw = heads.hkv * heads.d;
        let rows = seqs.iter().map(|s| s.1).sum();
        let stride = heads.hq * heads.d + 2 * kvw + 5;
        let group = heads.hq / heads.hkv;
        Batch {
            heads,
            k_pool: randn(rng, num_blocks * block_size * kvw, 1.0),
            v_pool: randn(rng, num_blocks * block_size * kvw, 1.0),
            qkv: randn(rng, rows * stride, 1.0),
            kv_index: (0..heads.hq).map(|h| (h / group) as i32).collect(),
            seqs,
            block_size,
            num_blocks,
            tables,
            stride,
            rows,
        }
    }

    /// The step's row lists and split count.
    pub fn host_rows(&self) -> HostRows {
        let mut h = HostRows::default();
        for (&(start, tokens), table) in self.seqs.iter().zip(&self.tables) {
            let off = h.tables.len() as i32;
            h.tables.extend(table.iter().map(|&b| b as i32));
            let first = h.positions.len();
            for p in start..start + tokens {
                h.positions.push(p as i32);
                h.table_off.push(off);
                let slot =
                    table[p / self.block_size] as usize * self.block_size + p % self.block_size;
                h.slots.push(slot as i32);
            }
            if tokens == 1 {
                h.decode_rows.push(first as i32);
            } else {
                for t0 in (0..tokens).step_by(TILE_ROWS) {
                    h.tile_first.push((first + t0) as i32);
                    h.tile_rows.push(TILE_ROWS.min(tokens - t0) as i32);
                }
            }
        }
        let longest = h
            .decode_rows
            .iter()
            .map(|&r| h.positions[r as usize] as usize + 1)
            .max();
        let wanted = longest
            .unwrap_or(0)
            .div_ceil(SPLIT_KEYS)
            .max(1)
            .next_power_of_two();
        (h.splits, h.split_len) = if h.decode_rows.is_empty() {
            (0, SPLIT_KEYS)
        } else if wanted <= MAX_SPLITS {
            (wanted, SPLIT_KEYS)
        } else {
            (MAX_SPLITS, SPLIT_KEYS * (wanted / MAX_SPLITS))
        };
        h
    }

    /// The pools after the new rows' keys/values are written, and the queries alone.
    pub fn written(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (hq, d, kvw) = (self.heads.hq, self.heads.d, self.heads.hkv * self.heads.d);
        let (mut kc, mut vc) = (self.k_pool.clone(), self.v_pool.clone());
        let mut q = Vec::with_capacity(self.rows * hq * d);
        let mut r = 0;
        for (&(s, t), tb) in self.seqs.iter().zip(&self.tables) {
            for i in 0..t {
                let p = s + i;
                let slot = tb[p / self.block_size] as usize * self.block_size + p % self.block_size;
                let row = &self.qkv[(r + i) * self.stride..][..self.stride];
                kc[slot * kvw..][..kvw].copy_from_slice(&row[hq * d..hq * d + kvw]);
                vc[slot * kvw..][..kvw].copy_from_slice(&row[hq * d + kvw..hq * d + 2 * kvw]);
                q.extend_from_slice(&row[..hq * d]);
            }
            r += t;
        }
        (kc, vc, q)
    }

    /// `tessera_kernels::paged_attention` over pools `kc`/`vc` (rows × hq × d).
    pub fn reference(&self, q: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
        let mut paged = Vec::new();
        let mut row = 0;
        for (&(s, t), tb) in self.seqs.iter().zip(&self.tables) {
            paged.push(PagedSeq {
                row,
                tokens: t,
                start: s,
                block_table: tb,
            });
            row += t;
        }
        let kv_index: Vec<usize> = self.kv_index.iter().map(|&i| i as usize).collect();
        let shape = PagedShape {
            head_dim: self.heads.d,
            kv_heads: self.heads.hkv,
            kv_index: &kv_index,
            window: self.heads.window,
            block_size: self.block_size,
        };
        let pool = CpuPool::new(1).expect("pool");
        let mut want = vec![0.0f32; self.rows * self.heads.hq * self.heads.d];
        tessera_kernels::paged_attention(&pool, q, kc, vc, &paged, &shape, &mut want)
            .expect("reference");
        want
    }
}
