//! The CUDA backend of the shared forward pass (`tessera_model::RankModel`): device
//! buffers, cuBLASLt GEMMs, the kernels of `cuda/`, the device KV pool and NCCL.
//!
//! What the plan asks and CUDA cannot run is refused at load ([`Backend::supports`]):
//! sequence parallelism and the deterministic reduction across ranks (NCCL sums in its
//! own order, and has no ordered reduce-scatter here). At one rank the deterministic mode
//! has nothing to reduce across; its fixed-chunk fold runs as one cuBLASLt GEMM.
//!
//! Every buffer a step needs is allocated the first time a step of its size runs; the
//! backend counts those allocations ([`CudaBackend::allocations`]) so a CUDA graph
//! captured over the buffers can tell when they moved.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use cudarc::driver::CudaSlice;
use tessera_kernels::ChunkOutput;
use tessera_model::{Backend, HeadLayout, ModelError, PlanNeeds, StepSeq, Weight, WeightDtype};
use tessera_plan::{ModelShape, ReduceMode, Span};

use crate::cache::CudaKvCache;
use crate::collective::DeviceComm;
use crate::device::Gpu;
use crate::device_step::{CudaStep, Heads, StepKey};
use crate::error::CudaError;
use crate::ops::{self, DeviceDtype, DeviceMatrix, DeviceRope};

/// A layer's head map on the device: each local query head's key/value head, and, when
/// every key/value head serves the same number of query heads (at most
/// [`ops::MAX_GROUP`]), the query heads of each group for the bf16 pool's kernel.
pub struct CudaHeads {
    pub(crate) kv_index: CudaSlice<i32>,
    /// Query heads per key/value head; 0 when the groups are uneven.
    pub(crate) group: usize,
    pub(crate) group_heads: CudaSlice<i32>,
}

/// The vocabulary gather's buffers: the local logits padded to the longest slice, and
/// every rank's slice start and length.
struct Exchange {
    send: CudaSlice<f32>,
    spans: Vec<Span>,
    starts: CudaSlice<i32>,
    lens: CudaSlice<i32>,
}

/// The CUDA backend of one rank on one GPU.
pub struct CudaBackend {
    gpu: Gpu,
    dtype: DeviceDtype,
    heads: Heads,
    /// Activations cast to the weights' half dtype before a GEMM.
    x_half: Mutex<CudaSlice<u16>>,
    exchange: Mutex<Option<Exchange>>,
    allocations: AtomicU64,
    last_step: Mutex<StepKey>,
    /// A head map loaded so far has uneven groups (the bf16 pool cannot serve it).
    uneven: AtomicBool,
}

impl CudaBackend {
    /// A backend on `gpu` storing weights as `dtype`, for a model of `shape`.
    pub fn new(gpu: Gpu, dtype: DeviceDtype, shape: &ModelShape) -> Result<Self, CudaError> {
        let x_half = gpu.zeros(1)?;
        Ok(Self {
            gpu,
            dtype,
            heads: Heads {
                q: shape.heads,
                kv: shape.kv_heads,
                dim: shape.head_dim,
            },
            x_half: Mutex::new(x_half),
            exchange: Mutex::new(None),
            allocations: AtomicU64::new(0),
            last_step: Mutex::new(StepKey::default()),
            uneven: AtomicBool::new(false),
        })
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The weights' storage dtype.
    pub fn dtype(&self) -> DeviceDtype {
        self.dtype
    }

    /// Step buffers allocated or moved so far (a graph is valid while this stays put).
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// The attention grids of the last prepared step.
    pub fn last_step(&self) -> StepKey {
        *self.last_step.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every head map loaded so far forms even GQA groups of at most
    /// [`ops::MAX_GROUP`] (what the bf16 pool's kernel needs).
    pub fn even_groups(&self) -> bool {
        !self.uneven.load(Ordering::Relaxed)
    }

    fn moved(&self) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }

    /// `x_half` with room for `len` values.
    fn half_scratch(
        &self,
        len: usize,
    ) -> Result<std::sync::MutexGuard<'_, CudaSlice<u16>>, CudaError> {
        let mut x = self.x_half.lock().unwrap_or_else(|e| e.into_inner());
        if x.len() < len {
            *x = self.gpu.zeros(len.next_power_of_two())?;
            self.moved();
        }
        Ok(x)
    }

    /// The exchange buffers for `spans` with a send buffer of `block` values.
    fn exchange(
        &self,
        spans: &[Span],
        block: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<Exchange>>, CudaError> {
        let mut ex = self.exchange.lock().unwrap_or_else(|e| e.into_inner());
        let fits = ex
            .as_ref()
            .is_some_and(|e| e.spans == spans && e.send.len() >= block);
        if !fits {
            let starts: Vec<i32> = spans.iter().map(|s| s.start as i32).collect();
            let lens: Vec<i32> = spans.iter().map(|s| s.len() as i32).collect();
            *ex = Some(Exchange {
                send: self.gpu.zeros(block.next_power_of_two())?,
                spans: spans.to_vec(),
                starts: self.gpu.upload(&starts)?,
                lens: self.gpu.upload(&lens)?,
            });
            self.moved();
        }
        Ok(ex)
    }

    /// The head map of `map` (local query head -> local key/value head).
    fn head_map(&self, map: &[usize]) -> Result<CudaHeads, CudaError> {
        let kv: Vec<i32> = map.iter().map(|&h| h as i32).collect();
        let kv_heads = map.iter().max().map_or(0, |&m| m + 1);
        let groups: Vec<Vec<i32>> = (0..kv_heads)
            .map(|j| {
                (0..map.len() as i32)
                    .filter(|&h| map[h as usize] == j)
                    .collect()
            })
            .collect();
        let group = groups.first().map_or(0, Vec::len);
        let even = group > 0 && group <= ops::MAX_GROUP && groups.iter().all(|g| g.len() == group);
        if !even && !map.is_empty() {
            self.uneven.store(true, Ordering::Relaxed);
        }
        let flat: Vec<i32> = if even { groups.concat() } else { vec![0] };
        Ok(CudaHeads {
            kv_index: self.gpu.upload(if kv.is_empty() { &[0] } else { &kv })?,
            group: if even { group } else { 0 },
            group_heads: self.gpu.upload(&flat)?,
        })
    }
}

/// Refuses what the CUDA backend does not run (see the module's doc); callers may check
/// this before opening a GPU.
pub fn plan_support(needs: &PlanNeeds) -> Result<(), ModelError> {
    if needs.world > 1 && needs.sequence_parallel {
        return Err(unsupported(
            "a sequence-parallel plan (megatron-sp)",
            "use --strategy megatron (or another plan without sequence parallelism)",
        ));
    }
    if needs.world > 1 && needs.reduce == ReduceMode::Deterministic {
        return Err(unsupported(
            "the deterministic reduction across ranks",
            "pass --fast-reduce (NCCL sums partial sums in its own order)",
        ));
    }
    Ok(())
}

/// A refusal of something this backend does not run.
fn unsupported(what: &str, hint: &'static str) -> ModelError {
    ModelError::Unsupported {
        backend: "cuda",
        what: what.into(),
        hint,
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Matrix = DeviceMatrix;
    type Vector = CudaSlice<f32>;
    type Index = CudaHeads;
    type Rope = DeviceRope;
    type Cache = CudaKvCache;
    type Comm = dyn DeviceComm;
    type Step = CudaStep;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn supports(&self, needs: &PlanNeeds) -> Result<(), ModelError> {
        plan_support(needs)
    }

    fn matrix(
        &self,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
        _dtype: WeightDtype,
    ) -> Result<DeviceMatrix, ModelError> {
        // The loader's f32/bf16 choice is this backend's `dtype` (which may be f16).
        Ok(DeviceMatrix::upload(
            &self.gpu, &data, rows, cols, self.dtype,
        )?)
    }

    fn matrix_bytes(m: &DeviceMatrix) -> usize {
        m.bytes()
    }

    fn vector(&self, data: Vec<f32>) -> Result<CudaSlice<f32>, ModelError> {
        Ok(self
            .gpu
            .upload(if data.is_empty() { &[0.0] } else { &data })?)
    }

    fn index(&self, map: &[usize]) -> Result<CudaHeads, ModelError> {
        Ok(self.head_map(map)?)
    }

    fn rope_table(
        &self,
        head_dim: usize,
        positions: usize,
        inv_freq: &[f32],
    ) -> Result<DeviceRope, ModelError> {
        Ok(DeviceRope::new(&self.gpu, head_dim, positions, inv_freq)?)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>, ModelError> {
        self.moved();
        Ok(self.gpu.scratch(len)?)
    }

    fn capacity(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn download(&self, buf: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.gpu.download_prefix(buf, len)?)
    }

    fn prepare(
        &self,
        step: &mut CudaStep,
        cache: &CudaKvCache,
        seqs: &[StepSeq],
        picks: &[usize],
    ) -> Result<(), ModelError> {
        let (key, moved) = step.fill(&self.gpu, cache, seqs, picks, self.heads)?;
        if moved {
            self.moved();
        }
        *self.last_step.lock().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    fn embed(
        &self,
        step: &CudaStep,
        rows: Range<usize>,
        table: &Weight<Self>,
        span: Span,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        if rows.start != 0 {
            // Only sequence parallelism embeds from a later row, and it is refused at load.
            return Err(unsupported(
                "an embedding from a later row",
                "see supports()",
            ));
        }
        let ids = &step.inputs()?.ids;
        ops::embedding(&self.gpu, ids, rows.len(), &table.data, span.start, out)?;
        Ok(())
    }

    fn matmul(
        &self,
        x: &CudaSlice<f32>,
        m: usize,
        w: &Weight<Self>,
        bias: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        // Only half-precision weights read `x` cast into the scratch.
        let half = if w.data.dtype() == DeviceDtype::F32 {
            0
        } else {
            m * w.cols
        };
        let mut x_half = self.half_scratch(half)?;
        ops::gemm(&self.gpu, x, m, &w.data, y, &mut x_half)?;
        match bias {
            // A rank without heads has an empty bias (stored as one value): nothing to add.
            Some(b) if w.rows > 0 => ops::add_bias(&self.gpu, y, b, m)?,
            _ => {}
        }
        Ok(())
    }

    fn matmul_chunked(
        &self,
        x: &CudaSlice<f32>,
        m: usize,
        w: &Weight<Self>,
        _chunk: usize,
        output: ChunkOutput,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        match output {
            // One rank (the only deterministic case `supports` admits): cuBLASLt's order.
            ChunkOutput::Fold => self.matmul(x, m, w, None, y),
            ChunkOutput::Partials => Err(unsupported(
                "per-chunk partial sums (the deterministic reduction across ranks)",
                "pass --fast-reduce",
            )),
        }
    }

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        weight: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Ok(ops::rms_norm(&self.gpu, x, weight, eps, rows, out)?)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        rows: usize,
        weight: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Ok(ops::add_rms_norm(
            &self.gpu, residual, delta, weight, eps, rows, out,
        )?)
    }

    fn attention(
        &self,
        qkv: &mut CudaSlice<f32>,
        rows: usize,
        heads: &HeadLayout<'_, Self>,
        cache: &mut CudaKvCache,
        step: &CudaStep,
        _seqs: &[StepSeq],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Ok(crate::attend::attention(
            &self.gpu,
            qkv,
            rows,
            heads,
            cache,
            step.inputs()?,
            out,
        )?)
    }

    fn silu_mul(
        &self,
        gate_up: &CudaSlice<f32>,
        rows: usize,
        inter: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Ok(ops::silu_mul(&self.gpu, gate_up, inter, rows, out)?)
    }

    fn add(
        &self,
        x: &mut CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), ModelError> {
        if len == 0 {
            return Ok(());
        }
        Ok(ops::add(&self.gpu, x, delta, len)?)
    }

    fn pick_rows(
        &self,
        x: &CudaSlice<f32>,
        width: usize,
        picks: &[usize],
        step: &CudaStep,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        let pick = &step.inputs()?.pick;
        Ok(ops::gather_rows(
            &self.gpu,
            x,
            width,
            pick,
            picks.len(),
            out,
        )?)
    }

    fn all_reduce_sum(
        &self,
        comm: &mut Self::Comm,
        buf: &mut CudaSlice<f32>,
        len: usize,
    ) -> Result<(), ModelError> {
        Ok(comm.all_reduce_sum(&self.gpu, buf, len)?)
    }

    fn all_reduce_ordered(
        &self,
        _comm: &mut Self::Comm,
        _partials: &CudaSlice<f32>,
        _len: usize,
        _out: &mut CudaSlice<f32>,
        _out_len: usize,
    ) -> Result<(), ModelError> {
        Err(unsupported("the ordered all-reduce", "pass --fast-reduce"))
    }

    fn reduce_scatter_ordered(
        &self,
        _comm: &mut Self::Comm,
        _partials: &CudaSlice<f32>,
        _len: usize,
        _full: usize,
        _keep: Range<usize>,
        _out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Err(unsupported(
            "the ordered reduce-scatter (sequence parallelism)",
            "use --strategy megatron",
        ))
    }

    fn all_gather(
        &self,
        _comm: &mut Self::Comm,
        _local: &CudaSlice<f32>,
        _len: usize,
        _out: &mut CudaSlice<f32>,
        _out_len: usize,
    ) -> Result<(), ModelError> {
        Err(unsupported(
            "the row all-gather (sequence parallelism)",
            "use --strategy megatron",
        ))
    }

    fn gather_vocab(
        &self,
        comm: &mut Self::Comm,
        local: &CudaSlice<f32>,
        rows: usize,
        spans: &[Span],
        scratch: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        Ok(self.gather_logits(comm, local, rows, spans, scratch, out)?)
    }
}

impl CudaBackend {
    /// [`Backend::gather_vocab`]: every rank sends the same count (its rows padded to the
    /// longest slice), then the slices are put back in vocabulary order on the device.
    fn gather_logits(
        &self,
        comm: &mut (dyn DeviceComm + 'static),
        local: &CudaSlice<f32>,
        rows: usize,
        spans: &[Span],
        scratch: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let world = spans.len();
        let vocab: usize = spans.iter().map(Span::len).sum();
        let longest = spans.iter().map(Span::len).max().unwrap_or(0);
        let mine = spans.get(comm.rank()).map_or(0, Span::len);
        let block = rows * longest;
        let mut ex = self.exchange(spans, block)?;
        let Some(ex) = ex.as_mut() else {
            return Err(CudaError::Collective("exchange buffers missing".into()));
        };
        if scratch.len() < world * block {
            *scratch = self.gpu.scratch(world * block)?;
            self.moved();
        }
        if rows * mine > 0 {
            let dst = &mut ex.send.slice_mut(..rows * mine);
            self.gpu
                .stream()
                .memcpy_dtod(&local.slice(..rows * mine), dst)?;
        }
        comm.all_gather_device(&self.gpu, &ex.send, block, scratch)?;
        ops::unpad_logits(
            &self.gpu, scratch, &ex.starts, &ex.lens, world, block, rows, vocab, out,
        )
    }
}
