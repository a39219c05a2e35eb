//! A step's inputs on the device: token ids, picked rows, where each row reads and writes
//! in the pool, the decode kernel's splits and the attention partials. The buffers are
//! kept between steps and grown to the largest step seen, so a step of a shape seen
//! before copies its inputs into the same addresses (a captured graph stays valid).

use cudarc::driver::CudaSlice;
use tessera_model::StepSeq;

use crate::cache::{CudaKvCache, KvDtype};
use crate::device::Gpu;
use crate::error::CudaError;
use crate::ops::{refill, AttentionRows, AttentionScratch, DecodeSplits};

/// A step's inputs as the CUDA kernels read them ([`tessera_model::Backend::Step`]).
#[derive(Default)]
pub struct CudaStep {
    dev: Option<StepInputs>,
}

/// The device buffers of [`CudaStep`].
pub(crate) struct StepInputs {
    /// Token ids of every row.
    pub(crate) ids: CudaSlice<i32>,
    /// Rows whose logits the step returns.
    pub(crate) pick: CudaSlice<i32>,
    /// Positions, tables and slots of every row (both pools).
    pub(crate) rows: AttentionRows,
    /// Split counts of the bf16 pool's decode kernel.
    pub(crate) splits: DecodeSplits,
    /// Partials of the split attention kernels.
    pub(crate) scratch: AttentionScratch,
}

/// What a captured graph of a step depends on besides its row count: the attention grids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StepKey {
    /// Rows of the step.
    pub rows: usize,
    /// Splits and keys per split of the f32 pool's decode kernel.
    pub splits: (usize, usize),
    /// Most splits of a row in the bf16 pool's decode kernel.
    pub max_splits: usize,
}

/// The model's head counts (every rank sizes its scratch alike, so all grow together).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub(crate) q: usize,
    pub(crate) kv: usize,
    pub(crate) dim: usize,
}

impl CudaStep {
    /// The inputs, once a step was prepared.
    pub(crate) fn inputs(&self) -> Result<&StepInputs, CudaError> {
        self.dev.as_ref().ok_or_else(|| CudaError::Shape {
            op: "step",
            reason: "an op ran before the step's inputs were prepared".into(),
        })
    }

    /// Copies `seqs`' inputs and `picks` into the device buffers; returns the step's key
    /// and whether a buffer moved.
    pub(crate) fn fill(
        &mut self,
        gpu: &Gpu,
        cache: &CudaKvCache,
        seqs: &[StepSeq],
        picks: &[usize],
        heads: Heads,
    ) -> Result<(StepKey, bool), CudaError> {
        let mut moved = false;
        if self.dev.is_none() {
            self.dev = Some(StepInputs {
                ids: gpu.zeros(1)?,
                pick: gpu.zeros(1)?,
                rows: AttentionRows::empty(gpu)?,
                splits: DecodeSplits::empty(gpu)?,
                scratch: AttentionScratch::new(gpu)?,
            });
            moved = true;
        }
        let Some(dev) = self.dev.as_mut() else {
            return Err(CudaError::Collective("step inputs missing".into()));
        };
        let mut ids = Vec::new();
        let mut spec = Vec::with_capacity(seqs.len());
        for s in seqs {
            ids.extend(s.tokens.iter().map(|&t| t as i32));
            spec.push((s.start, s.tokens.len(), &s.block_table[..]));
        }
        let pick: Vec<i32> = picks.iter().map(|&r| r as i32).collect();
        moved |= refill(gpu, &ids, &mut dev.ids)?;
        moved |= refill(gpu, &pick, &mut dev.pick)?;
        // The pool holds one block past the engine's: the trash block of padded rows.
        let blocks = cache.num_blocks() + 1;
        moved |= dev
            .rows
            .fill(gpu, &spec, cache.block_size(), blocks, None)?;
        let parts = match cache.dtype() {
            KvDtype::Bf16 => {
                moved |= dev
                    .splits
                    .fill(gpu, &dev.rows, heads.q, heads.kv, gpu.sm_count())?;
                dev.splits.parts
            }
            // The split kernel's partials: decode rows x heads x splits.
            KvDtype::F32 => dev.rows.decode_count * heads.q * dev.rows.splits.max(1),
        };
        moved |= dev.scratch.reserve(gpu, parts, heads.dim)?;
        let key = StepKey {
            rows: dev.rows.rows,
            splits: (dev.rows.splits, dev.rows.split_len),
            max_splits: match cache.dtype() {
                KvDtype::Bf16 => dev.splits.max_splits,
                KvDtype::F32 => 0,
            },
        };
        Ok((key, moved))
    }
}
