//! The CPU backend: Tessera's own kernels on one rank's thread pool, host buffers, the
//! host [`PagedKvCache`] and any [`Communicator`].

use std::ops::Range;
use std::sync::Mutex;

use tessera_comm::Communicator;
use tessera_kernels::{
    chunk_count, BlockTensor, ChunkOutput, CpuPool, Isa, PagedSeq, PagedShape, RopeTable,
};
use tessera_plan::Span;

use crate::backend::{Backend, HeadLayout, Matrix, PlanNeeds, Weight, WeightDtype, WeightValues};
use crate::error::ModelError;
use crate::paged::{KvLayer, PagedKvCache};
use crate::step_seq::StepSeq;

/// The CPU backend: Tessera's own kernels on one rank's thread pool.
pub struct CpuBackend {
    pool: CpuPool,
    /// Contiguous q and k rows of the layer being run, kept between layers and steps.
    scratch: Mutex<(Vec<f32>, Vec<f32>)>,
}

/// A step's inputs on the host: token ids and their positions, sequence after sequence.
#[derive(Debug, Default)]
pub struct CpuStep {
    tokens: Vec<u32>,
    positions: Vec<usize>,
}

impl CpuBackend {
    /// A backend running on `threads` threads (the caller's thread included).
    pub fn new(threads: usize) -> Result<Self, ModelError> {
        Ok(Self {
            pool: CpuPool::new(threads.max(1))?,
            scratch: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    /// A backend whose kernels use `isa` (`None`: the fastest this CPU has); fails if the
    /// CPU lacks it. Forcing a slower path is how one machine measures another's.
    pub fn with_isa(threads: usize, isa: Option<Isa>) -> Result<Self, ModelError> {
        let pool = match isa {
            Some(isa) => CpuPool::with_isa(threads.max(1), isa)?,
            None => CpuPool::new(threads.max(1))?,
        };
        Ok(Self {
            pool,
            scratch: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    /// The backend's thread pool.
    pub fn pool(&self) -> &CpuPool {
        &self.pool
    }

    /// `y = x · wᵀ (+ bias)` in chunks of `chunk` columns, over the packed panels.
    #[allow(clippy::too_many_arguments)]
    fn matmul_chunked_into(
        &self,
        x: &[f32],
        m: usize,
        w: &Weight<Self>,
        bias: Option<&[f32]>,
        chunk: usize,
        output: ChunkOutput,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        let Some(p) = w.data.packed_ref() else {
            return Err(ModelError::Device {
                backend: "cpu",
                message: "a matmul over a lookup-only embedding table".into(),
            });
        };
        tessera_kernels::matmul_packed_chunked(&self.pool, x, m, p, bias, chunk, output, y)?;
        Ok(())
    }
}

/// Output length of a chunked matmul of `m` rows.
fn chunked_len(m: usize, w: &Weight<CpuBackend>, chunk: usize, output: ChunkOutput) -> usize {
    match output {
        ChunkOutput::Fold => m * w.rows,
        ChunkOutput::Partials => chunk_count(w.cols, chunk) * m * w.rows,
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Matrix = Matrix;
    type Vector = Vec<f32>;
    type Index = ();
    type Rope = RopeTable;
    type Cache = PagedKvCache;
    type Comm = dyn Communicator;
    type Step = CpuStep;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn supports(&self, _needs: &PlanNeeds) -> Result<(), ModelError> {
        Ok(())
    }

    fn matrix(
        &self,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Matrix, ModelError> {
        Matrix::new(data, rows, cols, dtype)
    }

    fn block_matrix(&self, t: BlockTensor) -> Result<Matrix, ModelError> {
        Ok(Matrix::blocks(&t))
    }

    fn table(
        &self,
        values: WeightValues,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        head: bool,
    ) -> Result<Matrix, ModelError> {
        Matrix::table(values, rows, cols, dtype, head)
    }

    fn matrix_bytes(m: &Matrix) -> usize {
        m.bytes()
    }

    fn vector(&self, data: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        Ok(data)
    }

    fn index(&self, _map: &[usize]) -> Result<(), ModelError> {
        Ok(())
    }

    fn rope_table(
        &self,
        head_dim: usize,
        positions: usize,
        inv_freq: &[f32],
    ) -> Result<RopeTable, ModelError> {
        Ok(RopeTable::new(head_dim, positions, inv_freq)?)
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(vec![0.0; len])
    }

    fn capacity(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn download(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(buf[..len].to_vec())
    }

    fn prepare(
        &self,
        step: &mut CpuStep,
        _cache: &PagedKvCache,
        seqs: &[StepSeq],
        _picks: &[usize],
    ) -> Result<(), ModelError> {
        step.tokens.clear();
        step.positions.clear();
        for s in seqs {
            step.tokens.extend_from_slice(&s.tokens);
            step.positions.extend(s.start..s.start + s.tokens.len());
        }
        Ok(())
    }

    fn embed(
        &self,
        step: &CpuStep,
        rows: Range<usize>,
        table: &Weight<Self>,
        span: Span,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let h = table.cols;
        let out = &mut out[..rows.len() * h];
        for (row, &id) in out.chunks_exact_mut(h.max(1)).zip(&step.tokens[rows]) {
            if span.contains(id as usize) {
                table.data.row_into(id as usize - span.start, row)?;
            } else {
                row.fill(0.0);
            }
        }
        Ok(())
    }

    fn matmul(
        &self,
        x: &Vec<f32>,
        m: usize,
        w: &Weight<Self>,
        bias: Option<&Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let y = &mut y[..m * w.rows];
        if w.cols == 0 {
            // A rank holding no columns (more ranks than heads) contributes zeros.
            for (i, v) in y.iter_mut().enumerate() {
                *v = bias.map_or(0.0, |b| b[i % w.rows.max(1)]);
            }
            return Ok(());
        }
        if w.rows == 0 || m == 0 {
            return Ok(());
        }
        let x = &x[..m * w.cols];
        let bias = bias.map(Vec::as_slice);
        self.matmul_chunked_into(x, m, w, bias, usize::MAX, ChunkOutput::Fold, y)
    }

    fn matmul_chunked(
        &self,
        x: &Vec<f32>,
        m: usize,
        w: &Weight<Self>,
        chunk: usize,
        output: ChunkOutput,
        y: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        if w.rows == 0 || m == 0 {
            return Ok(());
        }
        let y = &mut y[..chunked_len(m, w, chunk, output)];
        let x = &x[..m * w.cols];
        self.matmul_chunked_into(x, m, w, None, chunk, output, y)
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        weight: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let n = rows * weight.len();
        tessera_kernels::rms_norm(&x[..n], weight, eps, &mut out[..n])?;
        Ok(())
    }

    fn add_rms_norm(
        &self,
        residual: &mut Vec<f32>,
        delta: &Vec<f32>,
        rows: usize,
        weight: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let n = rows * weight.len();
        let (residual, delta, out) = (&mut residual[..n], &delta[..n], &mut out[..n]);
        tessera_kernels::add_rms_norm(residual, delta, weight, eps, out)?;
        Ok(())
    }

    fn attention(
        &self,
        qkv: &mut Vec<f32>,
        rows: usize,
        heads: &HeadLayout<'_, Self>,
        cache: &mut PagedKvCache,
        step: &CpuStep,
        seqs: &[StepSeq],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let d = heads.head_dim;
        let (qw, kvw) = (heads.q_heads * d, heads.kv_heads * d);
        if kvw == 0 {
            // No heads on this rank: the output has no columns.
            return Ok(());
        }
        let width = qw + 2 * kvw;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (q, k) = &mut *scratch;
        q.resize(rows * qw, 0.0);
        k.resize(rows * kvw, 0.0);
        for (i, row) in qkv[..rows * width].chunks_exact(width).enumerate() {
            q[i * qw..(i + 1) * qw].copy_from_slice(&row[..qw]);
            k[i * kvw..(i + 1) * kvw].copy_from_slice(&row[qw..qw + kvw]);
        }
        let positions = &step.positions[..rows];
        let (q, k) = (&mut q[..rows * qw], &mut k[..rows * kvw]);
        tessera_kernels::rope(q, heads.q_heads, d, positions, heads.rope)?;
        tessera_kernels::rope(k, heads.kv_heads, d, positions, heads.rope)?;
        let mut row = 0;
        let mut paged = Vec::with_capacity(seqs.len());
        for s in seqs {
            for i in 0..s.tokens.len() {
                let r = row + i;
                let slot = cache.slot(&s.block_table, s.start + i);
                let v = &qkv[r * width + qw + kvw..(r + 1) * width];
                cache.write(heads.layer, slot, &k[r * kvw..(r + 1) * kvw], v);
            }
            paged.push(PagedSeq {
                row,
                tokens: s.tokens.len(),
                start: s.start,
                block_table: &s.block_table,
            });
            row += s.tokens.len();
        }
        let shape = PagedShape {
            head_dim: d,
            kv_heads: heads.kv_heads,
            kv_index: heads.kv_index,
            window: heads.window,
            block_size: cache.block_size(),
        };
        let out = &mut out[..rows * qw];
        match cache.layer(heads.layer) {
            KvLayer::F32(kc, vc) => {
                tessera_kernels::paged_attention(&self.pool, q, kc, vc, &paged, &shape, out)?
            }
            KvLayer::Bf16(kc, vc) => {
                tessera_kernels::paged_attention_bf16(&self.pool, q, kc, vc, &paged, &shape, out)?
            }
        }
        Ok(())
    }

    fn silu_mul(
        &self,
        gate_up: &Vec<f32>,
        rows: usize,
        inter: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        if inter == 0 {
            return Ok(());
        }
        let pairs = out[..rows * inter]
            .chunks_exact_mut(inter)
            .zip(gate_up[..rows * 2 * inter].chunks_exact(2 * inter));
        for (a, gu) in pairs {
            a.copy_from_slice(&gu[..inter]);
            tessera_kernels::silu_mul(&self.pool, a, &gu[inter..])?;
        }
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, delta: &Vec<f32>, len: usize) -> Result<(), ModelError> {
        for (xi, di) in x[..len].iter_mut().zip(&delta[..len]) {
            *xi += *di;
        }
        Ok(())
    }

    fn pick_rows(
        &self,
        x: &Vec<f32>,
        width: usize,
        picks: &[usize],
        _step: &CpuStep,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        for (i, &r) in picks.iter().enumerate() {
            out[i * width..(i + 1) * width].copy_from_slice(&x[r * width..(r + 1) * width]);
        }
        Ok(())
    }

    fn all_reduce_sum(
        &self,
        comm: &mut Self::Comm,
        buf: &mut Vec<f32>,
        len: usize,
    ) -> Result<(), ModelError> {
        comm.all_reduce_sum(&mut buf[..len])?;
        Ok(())
    }

    fn all_reduce_ordered(
        &self,
        comm: &mut Self::Comm,
        partials: &Vec<f32>,
        len: usize,
        out: &mut Vec<f32>,
        out_len: usize,
    ) -> Result<(), ModelError> {
        comm.all_reduce_ordered(&partials[..len], &mut out[..out_len])?;
        Ok(())
    }

    fn reduce_scatter_ordered(
        &self,
        comm: &mut Self::Comm,
        partials: &Vec<f32>,
        len: usize,
        full: usize,
        keep: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let out = &mut out[..keep.len()];
        comm.reduce_scatter_ordered(&partials[..len], full, keep, out)?;
        Ok(())
    }

    fn all_gather(
        &self,
        comm: &mut Self::Comm,
        local: &Vec<f32>,
        len: usize,
        out: &mut Vec<f32>,
        out_len: usize,
    ) -> Result<(), ModelError> {
        comm.all_gather(&local[..len], &mut out[..out_len])?;
        Ok(())
    }

    fn gather_vocab(
        &self,
        comm: &mut Self::Comm,
        local: &Vec<f32>,
        rows: usize,
        spans: &[Span],
        scratch: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let vocab: usize = spans.iter().map(Span::len).sum();
        let mine = spans.get(comm.rank()).map_or(0, Span::len);
        // One gather for all rows: the buffer holds [rank][row][rank's vocabulary slice];
        // rearrange it into [row][vocab] using the plan's spans.
        let gathered = &mut scratch[..rows * vocab];
        comm.all_gather(&local[..rows * mine], gathered)?;
        let out = &mut out[..rows * vocab];
        if rows == 1 {
            out.copy_from_slice(gathered);
            return Ok(());
        }
        for span in spans {
            let len = span.len();
            for r in 0..rows {
                let src = &gathered[rows * span.start + r * len..][..len];
                out[r * vocab + span.start..][..len].copy_from_slice(src);
            }
        }
        Ok(())
    }
}
