//! Every kernel against its CPU reference on fresh random inputs: used by the GPU tests
//! and by `tessera gpu-check`.
//!
//! Outputs are poisoned with NaN before each run, so an element a kernel fails to write
//! fails the check; NaN never passes. The error is `‖out − ref‖ / ‖ref‖` in f64, bounded
//! per op and dtype (f32 arithmetic far under 1e-4; bf16 operands under 1e-2).

use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tessera_kernels::{CpuPool, PagedSeq, PagedShape, RopeTable};

use tessera_cuda::ops::{
    self, AttentionRows, DeviceDtype, DeviceMatrix, DeviceRope, PoolShape, SampleParams,
};
use tessera_cuda::reference;
use tessera_cuda::{CudaError, Gpu};

/// One op's comparison with its reference.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// The op and case.
    pub op: String,
    /// Weight dtype of the case.
    pub dtype: String,
    /// ‖out − ref‖ / ‖ref‖ (exact-match ops: the fraction of rows that differ).
    pub rel_err: f64,
    /// The bound it must stay under.
    pub bound: f64,
    /// Whether it passed (finite everywhere and under the bound).
    pub passed: bool,
    /// The error that stopped the op, if it did not run to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The ops checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// cuBLAS GEMM in f32, bf16 and f16.
    Gemm,
    /// RMSNorm.
    RmsNorm,
    /// Fused residual add + RMSNorm.
    AddRmsNorm,
    /// RoPE with Llama 3 scaling on q and k inside a fused qkv row.
    Rope,
    /// SiLU gate multiply.
    SiluMul,
    /// Vocabulary-parallel embedding gather.
    Embedding,
    /// Paged attention, one new token per sequence (GQA, long contexts, several splits).
    AttentionDecode,
    /// Paged attention over prompts (causal), with a sliding window case.
    AttentionPrefill,
    /// Argmax.
    Argmax,
    /// Temperature / top-k / top-p sampling.
    Sample,
}

impl Op {
    /// Every op.
    pub const ALL: [Op; 10] = [
        Op::Gemm,
        Op::RmsNorm,
        Op::AddRmsNorm,
        Op::Rope,
        Op::SiluMul,
        Op::Embedding,
        Op::AttentionDecode,
        Op::AttentionPrefill,
        Op::Argmax,
        Op::Sample,
    ];
}

/// Relative error of `out` against `reference`; infinite when `out` has a NaN.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}

fn report(op: &str, dtype: &str, rel_err: f64, bound: f64) -> OpReport {
    OpReport {
        op: op.to_string(),
        dtype: dtype.to_string(),
        rel_err,
        bound,
        passed: rel_err.is_finite() && rel_err <= bound,
        error: None,
    }
}

/// A kernel error from a reference call, as a shape error.
fn kernel_err(e: tessera_kernels::KernelError) -> CudaError {
    CudaError::Shape {
        op: "cpu reference",
        reason: e.to_string(),
    }
}

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn poisoned(gpu: &Gpu, n: usize) -> Result<CudaSlice<f32>, CudaError> {
    gpu.upload(&vec![f32::NAN; n.max(1)])
}

fn host(gpu: &Gpu, buf: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, CudaError> {
    gpu.download_prefix(buf, n)
}

/// Runs the checks of `op` with inputs drawn from `seed`.
pub fn check_op(gpu: &Gpu, op: Op, seed: u64) -> Result<Vec<OpReport>, CudaError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (op as u64) << 32);
    match op {
        Op::Gemm => check_gemm(gpu, &mut rng),
        Op::RmsNorm | Op::AddRmsNorm => check_norm(gpu, &mut rng, op == Op::AddRmsNorm),
        Op::Rope => check_rope(gpu, &mut rng),
        Op::SiluMul => check_silu(gpu, &mut rng),
        Op::Embedding => check_embedding(gpu, &mut rng),
        Op::AttentionDecode => check_attention(gpu, &mut rng, false),
        Op::AttentionPrefill => check_attention(gpu, &mut rng, true),
        Op::Argmax => check_argmax(gpu, &mut rng),
        Op::Sample => check_sample(gpu, &mut rng),
    }
}

/// Every op, each on its own: an op that fails with an error is reported as a failed
/// case holding the error, and the next op still runs (after a sticky CUDA error they
/// all report it, which still says which op hit it first).
pub fn check_all(gpu: &Gpu, seed: u64) -> Result<Vec<OpReport>, CudaError> {
    let mut out = Vec::new();
    for op in Op::ALL {
        match check_op(gpu, op, seed) {
            Ok(reports) => out.extend(reports),
            Err(e) => out.push(OpReport {
                op: format!("{op:?}"),
                dtype: String::new(),
                rel_err: f64::INFINITY,
                bound: 0.0,
                passed: false,
                error: Some(e.to_string()),
            }),
        }
    }
    Ok(out)
}

fn check_gemm(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let mut reports = Vec::new();
    for (dtype, name, bound) in [
        (DeviceDtype::F32, "f32", 1e-5),
        (DeviceDtype::Bf16, "bf16", 1e-2),
        (DeviceDtype::F16, "f16", 2e-3),
    ] {
        for (m, n, k) in [(1, 320, 576), (37, 200, 96), (64, 1000, 512)] {
            let x = randn(rng, m * k, 1.0);
            let w = randn(rng, n * k, 1.0 / (k as f32).sqrt());
            let dw = DeviceMatrix::upload(gpu, &w, n, k, dtype)?;
            let dx = gpu.upload(&x)?;
            let mut dy = poisoned(gpu, m * n)?;
            let mut scratch = gpu.zeros::<u16>(1)?;
            ops::gemm(gpu, &dx, m, &dw, &mut dy, &mut scratch)?;
            let y = host(gpu, &dy, m * n)?;
            // Reference in f64 on the values the device holds (weights in their dtype;
            // activations cast to it for half-precision GEMMs).
            let xr: Vec<f32> = x.iter().map(|&v| dtype.round(v)).collect();
            let wr: Vec<f32> = w.iter().map(|&v| dtype.round(v)).collect();
            let r = reference::matmul_f64(&xr, m, k, &wr, n);
            reports.push(report(
                &format!("gemm {m}x{n}x{k}"),
                name,
                rel_err(&y, &r),
                bound,
            ));
        }
    }
    Ok(reports)
}

fn check_norm(gpu: &Gpu, rng: &mut ChaCha8Rng, fused: bool) -> Result<Vec<OpReport>, CudaError> {
    let mut reports = Vec::new();
    for (rows, dim) in [(1, 576), (7, 4096), (33, 100)] {
        let x = randn(rng, rows * dim, 2.0);
        let delta = randn(rng, rows * dim, 1.0);
        let w: Vec<f32> = (0..dim)
            .map(|_| 1.0 + rng.random_range(-0.2f32..0.2))
            .collect();
        let eps = 1e-5;
        let dw = gpu.upload(&w)?;
        let mut dx = gpu.upload(&x)?;
        let mut dout = poisoned(gpu, rows * dim)?;
        let mut want = vec![0.0f32; rows * dim];
        if fused {
            let dd = gpu.upload(&delta)?;
            ops::add_rms_norm(gpu, &mut dx, &dd, &dw, eps, rows, &mut dout)?;
            let mut res = x.clone();
            tessera_kernels::add_rms_norm(&mut res, &delta, &w, eps, &mut want)
                .map_err(kernel_err)?;
            let got_res = host(gpu, &dx, rows * dim)?;
            reports.push(report(
                &format!("add_rms_norm residual {rows}x{dim}"),
                "f32",
                rel_err(&got_res, &res),
                1e-6,
            ));
            reports.push(report(
                &format!("add_rms_norm {rows}x{dim}"),
                "f32",
                rel_err(&host(gpu, &dout, rows * dim)?, &want),
                1e-5,
            ));
        } else {
            ops::rms_norm(gpu, &dx, &dw, eps, rows, &mut dout)?;
            tessera_kernels::rms_norm(&x, &w, eps, &mut want).map_err(kernel_err)?;
            reports.push(report(
                &format!("rms_norm {rows}x{dim}"),
                "f32",
                rel_err(&host(gpu, &dout, rows * dim)?, &want),
                1e-5,
            ));
        }
    }
    Ok(reports)
}

fn check_rope(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let (heads, kv_heads, d, max_pos) = (8, 2, 128, 4096);
    let inv_freq = reference::llama3_inv_freq(d)?;
    let table = RopeTable::new(d, max_pos, &inv_freq).map_err(kernel_err)?;
    let dtable = DeviceRope::new(gpu, d, max_pos, &inv_freq)?;
    let rows = 19;
    let stride = (heads + 2 * kv_heads) * d;
    let qkv = randn(rng, rows * stride, 1.0);
    let positions: Vec<usize> = (0..rows).map(|_| rng.random_range(0..max_pos)).collect();
    let pos32: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let mut dqkv = gpu.upload(&qkv)?;
    let dpos = gpu.upload(&pos32)?;
    ops::rope(gpu, &mut dqkv, stride, 0, heads, &dpos, &pos32, &dtable)?;
    ops::rope(
        gpu,
        &mut dqkv,
        stride,
        heads * d,
        kv_heads,
        &dpos,
        &pos32,
        &dtable,
    )?;
    let got = host(gpu, &dqkv, rows * stride)?;
    // Reference: q and k rotated separately on the CPU, v untouched.
    let mut want = qkv.clone();
    for (cols, h) in [
        (0..heads * d, heads),
        (heads * d..(heads + kv_heads) * d, kv_heads),
    ] {
        let mut part: Vec<f32> = want
            .chunks_exact(stride)
            .flat_map(|r| r[cols.clone()].to_vec())
            .collect();
        tessera_kernels::rope(&mut part, h, d, &positions, &table).map_err(kernel_err)?;
        for (row, p) in want.chunks_exact_mut(stride).zip(part.chunks_exact(h * d)) {
            row[cols.clone()].copy_from_slice(p);
        }
    }
    Ok(vec![report(
        "rope llama3 q+k in qkv",
        "f32",
        rel_err(&got, &want),
        1e-6,
    )])
}

fn check_silu(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let (rows, inter) = (13, 1536);
    let gu = randn(rng, rows * 2 * inter, 4.0);
    let dgu = gpu.upload(&gu)?;
    let mut dout = poisoned(gpu, rows * inter)?;
    ops::silu_mul(gpu, &dgu, inter, rows, &mut dout)?;
    let mut want = Vec::with_capacity(rows * inter);
    let pool = CpuPool::new(1).map_err(kernel_err)?;
    for r in gu.chunks_exact(2 * inter) {
        let mut g = r[..inter].to_vec();
        tessera_kernels::silu_mul(&pool, &mut g, &r[inter..]).map_err(kernel_err)?;
        want.extend(g);
    }
    Ok(vec![report(
        "silu_mul",
        "f32",
        rel_err(&host(gpu, &dout, rows * inter)?, &want),
        1e-5,
    )])
}

fn check_embedding(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let mut reports = Vec::new();
    let (vocab, hidden) = (1000, 96);
    let (start, len) = (300, 400);
    for (dtype, name) in [
        (DeviceDtype::F32, "f32"),
        (DeviceDtype::Bf16, "bf16"),
        (DeviceDtype::F16, "f16"),
    ] {
        let table = randn(rng, len * hidden, 1.0);
        let dtable = DeviceMatrix::upload(gpu, &table, len, hidden, dtype)?;
        let ids: Vec<i32> = (0..50).map(|_| rng.random_range(0..vocab)).collect();
        let dids = gpu.upload(&ids)?;
        let mut dout = poisoned(gpu, ids.len() * hidden)?;
        ops::embedding(gpu, &dids, ids.len(), &dtable, start, &mut dout)?;
        let mut want = vec![0.0f32; ids.len() * hidden];
        for (row, &id) in want.chunks_exact_mut(hidden).zip(&ids) {
            let local = id as usize;
            if (start..start + len).contains(&local) {
                for (o, &v) in row
                    .iter_mut()
                    .zip(&table[(local - start) * hidden..][..hidden])
                {
                    *o = dtype.round(v);
                }
            }
        }
        reports.push(report(
            "embedding vocab span 300..700",
            name,
            rel_err(&host(gpu, &dout, ids.len() * hidden)?, &want),
            0.0,
        ));
    }
    Ok(reports)
}

// TODO(issue 14): split when the CUDA forward moves onto RankModel.
#[allow(clippy::too_many_lines)]
fn check_attention(
    gpu: &Gpu,
    rng: &mut ChaCha8Rng,
    prefill: bool,
) -> Result<Vec<OpReport>, CudaError> {
    let mut reports = Vec::new();
    let cases: &[(usize, usize, usize, Option<usize>)] = if prefill {
        &[(64, 9, 3, None), (128, 8, 2, Some(37))]
    } else {
        &[(64, 9, 3, None), (128, 32, 8, None)]
    };
    for &(d, hq, hkv, window) in cases {
        let block_size = 16;
        // (start, new tokens) per sequence; decode contexts span several splits, and one
        // is long enough (past 64 splits of 256 keys) that its splits grow longer.
        let seqs: Vec<(usize, usize)> = if prefill {
            // Tiles of 16 rows over several key tiles, a chunk after a cached prefix,
            // a one-token prompt and a decode row with a long context, in one batch.
            vec![(0, 45), (20, 30), (0, 1), (0, 100), (300, 1)]
        } else {
            vec![(700, 1), (3, 1), (255, 1), (256, 1), (20_000, 1)]
        };
        let num_blocks = 20
            + seqs
                .iter()
                .map(|&(s, t)| (s + t).div_ceil(block_size))
                .sum::<usize>();
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        let tables: Vec<Vec<u32>> = seqs
            .iter()
            .map(|&(s, t)| {
                (0..(s + t).div_ceil(block_size))
                    .map(|_| free.pop().unwrap_or(0))
                    .collect()
            })
            .collect();
        let kvw = hkv * d;
        let k_pool = randn(rng, num_blocks * block_size * kvw, 1.0);
        let v_pool = randn(rng, num_blocks * block_size * kvw, 1.0);
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        // Queries and new keys/values sit in a fused row [q | k | v | pad].
        let stride = hq * d + 2 * kvw + 5;
        let qkv = randn(rng, rows * stride, 1.0);
        let group = hq / hkv;
        let kv_index: Vec<usize> = (0..hq).map(|h| h / group).collect();
        let kv_index32: Vec<i32> = kv_index.iter().map(|&i| i as i32).collect();

        let spec: Vec<(usize, usize, &[u32])> = seqs
            .iter()
            .zip(&tables)
            .map(|(&(s, t), tb)| (s, t, tb.as_slice()))
            .collect();
        let arows = AttentionRows::new(gpu, &spec, block_size, num_blocks)?;
        let mut dk = gpu.upload(&k_pool)?;
        let mut dv = gpu.upload(&v_pool)?;
        let dqkv = gpu.upload(&qkv)?;
        let dkv_index = gpu.upload(&kv_index32)?;
        ops::kv_write(
            gpu,
            &dqkv,
            stride,
            hq * d,
            hq * d + kvw,
            kvw,
            &arows,
            &mut dk,
            &mut dv,
        )?;
        let shape = PoolShape {
            head_dim: d,
            kv_heads: hkv,
            block_size,
            window,
            kv_index: &dkv_index,
            q_heads: hq,
        };
        let mut dout = poisoned(gpu, rows * hq * d)?;
        let mut scratch = ops::AttentionScratch::new(gpu)?;
        scratch.reserve(gpu, rows * hq * arows.splits.max(1), d)?;
        ops::paged_attention(
            gpu, &dqkv, stride, 0, &dk, &dv, &arows, &shape, &scratch, &mut dout,
        )?;
        let got = host(gpu, &dout, rows * hq * d)?;

        // CPU: write the same keys/values, then tessera_kernels::paged_attention.
        let (mut kc, mut vc) = (k_pool, v_pool);
        let mut q = Vec::with_capacity(rows * hq * d);
        let mut r = 0;
        for (&(s, t), tb) in seqs.iter().zip(&tables) {
            for i in 0..t {
                let p = s + i;
                let slot = tb[p / block_size] as usize * block_size + p % block_size;
                let row = &qkv[(r + i) * stride..][..stride];
                kc[slot * kvw..][..kvw].copy_from_slice(&row[hq * d..hq * d + kvw]);
                vc[slot * kvw..][..kvw].copy_from_slice(&row[hq * d + kvw..hq * d + 2 * kvw]);
                q.extend_from_slice(&row[..hq * d]);
            }
            r += t;
        }
        let mut paged = Vec::new();
        let mut row = 0;
        for (&(s, t), tb) in seqs.iter().zip(&tables) {
            paged.push(PagedSeq {
                row,
                tokens: t,
                start: s,
                block_table: tb,
            });
            row += t;
        }
        let pshape = PagedShape {
            head_dim: d,
            kv_heads: hkv,
            kv_index: &kv_index,
            window,
            block_size,
        };
        let pool = CpuPool::new(1).map_err(kernel_err)?;
        let mut want = vec![0.0f32; rows * hq * d];
        tessera_kernels::paged_attention(&pool, &q, &kc, &vc, &paged, &pshape, &mut want)
            .map_err(kernel_err)?;
        let name = format!(
            "paged_attention {} d{d} hq{hq} hkv{hkv}{}",
            if prefill { "prefill" } else { "decode" },
            window.map_or(String::new(), |w| format!(" window{w}"))
        );
        reports.push(report(&name, "f32", rel_err(&got, &want), 1e-4));
        // The pool written on the device holds the same keys as the CPU's.
        reports.push(report(
            &format!("{name} kv_write"),
            "f32",
            rel_err(&host(gpu, &dk, kc.len())?, &kc),
            0.0,
        ));
    }
    Ok(reports)
}

fn check_argmax(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let (rows, vocab) = (9, 49152);
    let mut logits = randn(rng, rows * vocab, 10.0);
    // A NaN never wins; a tie goes to the first index.
    logits[5] = f32::NAN;
    logits[vocab + 17] = 1e4;
    logits[vocab + 40000] = 1e4;
    let d = gpu.upload(&logits)?;
    let got = ops::argmax(gpu, &d, rows, vocab)?;
    let want: Vec<i32> = logits
        .chunks_exact(vocab)
        .map(|r| tessera_kernels::argmax(r).map_or(-1, |i| i as i32))
        .collect();
    let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    Ok(vec![report(
        "argmax",
        "f32",
        wrong as f64 / rows as f64,
        0.0,
    )])
}

fn check_sample(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<OpReport>, CudaError> {
    let mut reports = Vec::new();
    let (rows, vocab) = (16, 32000);
    for params in [
        SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        },
        SampleParams {
            temperature: 0.7,
            top_k: 50,
            top_p: 1.0,
        },
        SampleParams {
            temperature: 0.9,
            top_k: 0,
            top_p: 0.9,
        },
        SampleParams {
            temperature: 1.3,
            top_k: 200,
            top_p: 0.8,
        },
    ] {
        let logits = randn(rng, rows * vocab, 8.0);
        let uniforms: Vec<f32> = (0..rows).map(|_| rng.random_range(0.0f32..1.0)).collect();
        let d = gpu.upload(&logits)?;
        let got = ops::sample(gpu, &d, rows, vocab, params, &uniforms)?;
        // f32 sums in another order: a draw is right within 1e-3 of probability mass.
        let wrong = logits
            .chunks_exact(vocab)
            .zip(&uniforms)
            .zip(&got)
            .filter(|((row, &u), &g)| {
                g < 0 || !reference::sample_accepts(row, params, u, g as usize, 1e-3)
            })
            .count();
        reports.push(report(
            &format!(
                "sample T{} k{} p{}",
                params.temperature, params.top_k, params.top_p
            ),
            "f32",
            wrong as f64 / rows as f64,
            0.0,
        ));
    }
    Ok(reports)
}
