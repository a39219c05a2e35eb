//! The panel walk shared by every instruction-set path: threads own contiguous panel
//! ranges, row blocks of x stay in L2, register tiles run one reduction chunk at a time,
//! and the chunks' sums are folded (or written as partials) in chunk order.

use std::mem::MaybeUninit;
use std::ops::Range;

use half::bf16;

use super::pairs::{self, pairs_len, Rounded};
use super::rows_pack::pack_rows;
use super::{blocks, scalar, WeightRef};
use crate::aligned::{line_vec, LineVec, LINE};
use crate::isa::Isa;
use crate::pool::CpuPool;
use crate::quant::{self, act, BlockFormat, BLOCK};

/// Output rows of one panel (one zmm, two ymm).
pub(crate) const PANEL: usize = 16;
/// Columns are handed to threads in multiples of this (one panel).
pub(crate) const COLUMN_UNIT: usize = PANEL;
/// Below this many multiply-adds a matmul runs on the caller's thread alone.
const PARALLEL_MIN_FMAS: usize = 1 << 15;
/// Bytes of x a row block may occupy, so the block stays in L2 while w streams past it.
const X_BLOCK_BYTES: usize = 192 * 1024;
/// Largest tile output (rows x panels x 16) of any path.
const MAX_OUT: usize = 256;

/// Where a matmul's weights come from.
#[derive(Clone, Copy)]
pub(crate) enum Panels<'a> {
    /// Row-major weights, packed into panels on the fly, a panel group at a time.
    Rows(WeightRef<'a>),
    /// Packed f32 panels (`panels x k x 16`).
    F32(&'a [f32]),
    /// Packed bf16 pair panels (`panels x pairs_len(k) x 16`, see [`super::pairs`]).
    Bf16(&'a [u16]),
    /// Packed quantized panels (see [`crate::quant`]).
    Blocks(BlockFormat, &'a [u8]),
}

/// One panel group's weights as a tile kernel reads them.
#[derive(Clone, Copy)]
pub(crate) enum Src {
    /// f32 panels, `pstride` floats apart.
    F32(*const f32),
    /// bf16 pair panels, `pstride` elements apart.
    Pairs(*const u16),
    /// Quantized panels, `pstride` bytes apart.
    Blocks(BlockFormat, *const u8),
    /// One quantized panel widened to i16 codes and f32 scales (AVX2, see
    /// [`super::blocks_x86::widen_panel`]).
    #[cfg(target_arch = "x86_64")]
    Wide(BlockFormat, *const i16),
    /// 16 full row-major f32 rows, `pstride` floats apart (one-row GEMV only).
    RowsF32(*const f32),
    /// 16 full row-major bf16 rows, `pstride` elements apart (one-row GEMV only).
    RowsBf16(*const bf16),
}

/// Operands of one register tile and one reduction chunk: rows `0..mr` of x (at `x`,
/// `ldx` apart) against panels `0..np` of `w`, over k in `k0..k1`; the tile's sums go to
/// `out[r * np * 16 + p * 16 + o]`. A bf16 pair kernel reads x rounded (as f32 at `x`, or
/// as bf16 pairs at `xb` for the instruction), rows `ldx` apart; a block kernel reads x
/// rounded to i16 per block (`xq`, with scales `xd` and sums `xs`, see [`act`]).
#[derive(Clone, Copy)]
pub(crate) struct TileArgs {
    pub x: *const f32,
    pub xb: *const u16,
    pub xq: *const i16,
    pub xd: *const f32,
    pub xs: *const i32,
    pub ldx: usize,
    pub mr: usize,
    pub pstride: usize,
    pub np: usize,
    pub k0: usize,
    pub k1: usize,
    pub out: *mut f32,
}

/// Calls `$kernel::<MR, NP>($w, $a)` for the tile shape `($a.mr, $a.np)`, which must be
/// one of the listed `(MR, NP)` (an instruction-set path's tile shapes).
macro_rules! dispatch_tile {
    ($kernel:ident, $w:expr, $a:expr, $path:literal, [$(($r:literal, $p:literal)),* $(,)?]) => {
        match ($a.mr, $a.np) {
            // SAFETY: forwarded from the calling kernel's contract.
            $(($r, $p) => unsafe { $kernel::<$r, $p>($w, $a) },)*
            _ => unreachable!("tile {}x{} is not an {} tile shape", $a.mr, $a.np, $path),
        }
    };
}
pub(crate) use dispatch_tile;

/// Register tile shape of one instruction-set path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// x rows per GEMM tile.
    pub mr: usize,
    /// Panels per GEMM tile.
    pub np: usize,
    /// Panels per GEMV tile (m = 1: more weight streams in flight).
    pub np_gemv: usize,
}

/// `y` shared by the threads of one matmul.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut f32);

// SAFETY: each thread writes only the columns of its own panel range (and, for partials,
// those columns of every chunk's slab), so no element is written by two threads; the
// pointee is f32.
unsafe impl Sync for OutPtr {}
// SAFETY: as above.
unsafe impl Send for OutPtr {}

/// A checked matmul: `y[i*n + j] = x[i*k ..] · w_j (+ bias[j])`, chunked over k.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    x: &'a [f32],
    /// Distance between rows of x: k, or `pairs_len(k)` once rounded for bf16 weights.
    ldx: usize,
    /// x rounded to bf16 pairs, for the bf16 instruction (else empty).
    xb: &'a [u16],
    /// x rounded for block weights (else empty rows).
    xq: Option<&'a act::QuantRows>,
    m: usize,
    k: usize,
    n: usize,
    w: Panels<'a>,
    bias: Option<&'a [f32]>,
    y: OutPtr,
    /// Width of the fixed reduction chunks over k (`>= k` for one chunk).
    chunk: usize,
    /// 0: fold the chunks into y (plus bias); else chunk c's sums go to `y[c * stride ..]`.
    partial_stride: usize,
}

impl<'a> Job<'a> {
    /// Operands whose lengths the caller has checked against (m, k, n) and the output mode.
    #[expect(
        clippy::too_many_arguments,
        reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
    )]
    pub(crate) fn new(
        x: &'a [f32],
        m: usize,
        k: usize,
        n: usize,
        w: Panels<'a>,
        bias: Option<&'a [f32]>,
        y: &'a mut [f32],
        chunk: usize,
        partial_stride: usize,
    ) -> Self {
        let y = OutPtr(y.as_mut_ptr());
        Job {
            x,
            ldx: k,
            xb: &[],
            xq: None,
            m,
            k,
            n,
            w,
            bias,
            y,
            chunk,
            partial_stride,
        }
    }
}

/// The register tiles of `isa` over quantized panels.
fn block_shape(isa: Isa) -> Shape {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::blocks_x86::AVX2_SHAPE,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => super::blocks_x86::AVX512_SHAPE,
        _ => blocks::SHAPE,
    }
}

/// The register tiles of `isa`.
pub(crate) fn shape(isa: Isa) -> Shape {
    match isa {
        Isa::Scalar => scalar::SHAPE,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::x86_avx2::SHAPE,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => super::x86_avx512::SHAPE,
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => scalar::SHAPE,
    }
}

/// Runs every column of `job`, split over the pool's threads when the work is worth it;
/// bf16 weights first round x once (see [`super::pairs`]), block weights to i16 (see
/// [`act`]).
pub(crate) fn run(pool: &CpuPool, job: &Job<'_>) {
    if job.m == 0 || job.n == 0 {
        return;
    }
    if let Panels::Blocks(..) = job.w {
        return act::with_quantized(pool, job.x, job.m, job.k, |rows| {
            run_split(
                pool,
                &Job {
                    xq: Some(rows),
                    ..*job
                },
            )
        });
    }
    if let Panels::Bf16(_) = job.w {
        let hw = pool.isa() == Isa::Avx512Bf16;
        let kp = pairs_len(job.k);
        return pairs::with_rounded(job.x, job.m, job.k, hw, |rounded| match rounded {
            Rounded::F32(x) => run_split(pool, &Job { x, ldx: kp, ..*job }),
            Rounded::Bf16(xb) => run_split(
                pool,
                &Job {
                    xb,
                    ldx: kp,
                    ..*job
                },
            ),
        });
    }
    run_split(pool, job);
}

/// [`run`] once x is in its final form.
fn run_split(pool: &CpuPool, job: &Job<'_>) {
    let threads = pool.threads();
    let isa = pool.isa();
    let fmas = job.m.saturating_mul(job.n).saturating_mul(job.k);
    if threads == 1 || fmas < PARALLEL_MIN_FMAS {
        run_columns(isa, job, 0..job.n);
        return;
    }
    pool.run(|thread| {
        let cols = thread_columns(job.n, threads, thread);
        if !cols.is_empty() {
            run_columns(isa, job, cols);
        }
    });
}

/// Thread `thread`'s contiguous share of `0..n`, in units of [`COLUMN_UNIT`].
pub(crate) fn thread_columns(n: usize, threads: usize, thread: usize) -> Range<usize> {
    let units = n.div_ceil(COLUMN_UNIT);
    let lo = units * thread / threads;
    let hi = units * (thread + 1) / threads;
    (lo * COLUMN_UNIT).min(n)..(hi * COLUMN_UNIT).min(n)
}

/// Whether a one-row matmul reads `w` straight from its panels (else through scratch).
fn reads_direct(w: &Panels<'_>) -> bool {
    !matches!(w, Panels::Rows(_))
}

/// Computes columns `cols` (starting on a panel boundary) of every row of `job`.
fn run_columns(isa: Isa, job: &Job<'_>, cols: Range<usize>) {
    let panels = cols.start / PANEL..cols.end.div_ceil(PANEL);
    let sh = match job.w {
        Panels::Blocks(..) => block_shape(isa),
        _ => shape(isa),
    };
    let k = job.k;
    if job.m == 1 && reads_direct(&job.w) {
        for p0 in panels.clone().step_by(sh.np_gemv) {
            let np = sh.np_gemv.min(panels.end - p0);
            tile_chunks(isa, job, 0, 1, p0, np, direct(job, p0));
        }
        return;
    }
    if let (1, Panels::Rows(w), false) = (job.m, job.w, isa == Isa::Scalar) {
        gemv_rows(isa, job, w, panels);
        return;
    }
    if reads_direct(&job.w) {
        // Packed panels: row blocks of x stay in L2 while the panels stream past them.
        let elem = if let Panels::Blocks(..) = job.w { 2 } else { 4 };
        let block = (X_BLOCK_BYTES / (elem * k.max(1)) / sh.mr * sh.mr).max(sh.mr);
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Avx2, Panels::Blocks(f, w)) = (isa, job.w) {
            wide_blocks(job, f, w, panels, block, sh);
            return;
        }
        for i0 in (0..job.m).step_by(block) {
            let i1 = job.m.min(i0 + block);
            for p0 in panels.clone().step_by(sh.np) {
                let np = sh.np.min(panels.end - p0);
                for i in (i0..i1).step_by(sh.mr) {
                    tile_chunks(isa, job, i, sh.mr.min(i1 - i), p0, np, direct(job, p0));
                }
            }
        }
        return;
    }
    // Row-major weights: each panel group is packed once into scratch, then every row of
    // x runs through it.
    // One row (GEMV) keeps more panels, so more fma chains, in flight.
    let step = if job.m == 1 { sh.np_gemv } else { sh.np };
    with_scratch(step * PANEL * k, |scratch| {
        for p0 in panels.clone().step_by(step) {
            let np = step.min(panels.end - p0);
            fill_scratch(job, p0, np, scratch);
            for i in (0..job.m).step_by(sh.mr) {
                let src = Src::F32(scratch.as_ptr());
                tile_chunks(isa, job, i, sh.mr.min(job.m - i), p0, np, src);
            }
        }
    });
}

/// The AVX2 batched matmul over quantized panels: each panel is widened once per row
/// block of x (codes to i16, scales to f32), then every row tile of the block reads it,
/// so no tile unpacks nibbles in its inner loop.
#[cfg(target_arch = "x86_64")]
fn wide_blocks(
    job: &Job<'_>,
    f: BlockFormat,
    w: &[u8],
    panels: Range<usize>,
    block: usize,
    sh: Shape,
) {
    use super::blocks_x86::{widen_panel, WIDE_BLOCK};
    let blocks = job.k / BLOCK;
    let bytes = quant::panel_bytes(f, job.k);
    // f32 scratch, line-aligned, reused as i16.
    with_scratch(blocks * WIDE_BLOCK / 2, |scratch| {
        let wide = scratch.as_mut_ptr().cast::<i16>();
        for i0 in (0..job.m).step_by(block) {
            let i1 = job.m.min(i0 + block);
            for p in panels.clone() {
                // SAFETY: panel p holds `blocks` blocks of `f` (the packed weights were
                // checked against k and n); the scratch holds blocks * WIDE_BLOCK i16 and
                // is line-aligned; the pool checked that the CPU has AVX2 and F16C.
                unsafe { widen_panel(f, w[p * bytes..].as_ptr(), blocks, wide) };
                for i in (i0..i1).step_by(sh.mr) {
                    tile_chunks(
                        Isa::Avx2,
                        job,
                        i,
                        sh.mr.min(i1 - i),
                        p,
                        1,
                        Src::Wide(f, wide),
                    );
                }
            }
        }
    });
}

thread_local! {
    /// Each thread's panel scratch, grown to the largest request and kept: a matmul over
    /// row-major or quantized weights (a tied f32 output head every step) allocates nothing.
    /// Line-aligned, as the kernels read packed panels from it.
    static SCRATCH: std::cell::RefCell<LineVec<f32>> = std::cell::RefCell::new(LineVec::new(LINE));
}

/// Calls `f` with `len` floats of this thread's scratch (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (never in the drive itself): a fresh buffer.
        Err(_) => f(&mut line_vec(0.0, len)),
    })
}

/// One-row matmul straight from row-major weights: full panels transpose in registers,
/// a last partial panel goes through scratch.
fn gemv_rows(isa: Isa, job: &Job<'_>, w: WeightRef<'_>, panels: Range<usize>) {
    let k = job.k;
    for p in panels {
        let first = p * PANEL;
        let src = if first + PANEL <= job.n {
            match w {
                WeightRef::F32(w) => Src::RowsF32(w[first * k..].as_ptr()),
                WeightRef::Bf16(w) => Src::RowsBf16(w[first * k..].as_ptr()),
            }
        } else {
            with_scratch(PANEL * k, |scratch| {
                fill_scratch(job, p, 1, scratch);
                tile_chunks(isa, job, 0, 1, p, 1, Src::F32(scratch.as_ptr()));
            });
            continue;
        };
        tile_chunks(isa, job, 0, 1, p, 1, src);
    }
}

/// The packed weights of panel `p0` onwards (`job.w` must be packed).
fn direct(job: &Job<'_>, p0: usize) -> Src {
    let at = p0 * PANEL * job.k;
    match job.w {
        Panels::F32(d) => Src::F32(d[at..].as_ptr()),
        Panels::Bf16(d) => Src::Pairs(d[p0 * PANEL * pairs_len(job.k)..].as_ptr()),
        Panels::Blocks(f, d) => Src::Blocks(f, d[p0 * quant::panel_bytes(f, job.k)..].as_ptr()),
        Panels::Rows(_) => unreachable!("row-major weights are never read directly"),
    }
}

/// Writes panels `p0 .. p0 + np` of row-major `job.w` as f32 panels (`16 k` floats apart)
/// into `scratch`.
fn fill_scratch(job: &Job<'_>, p0: usize, np: usize, scratch: &mut [f32]) {
    let k = job.k;
    if k == 0 {
        return;
    }
    match job.w {
        Panels::Rows(WeightRef::F32(w)) => pack_rows(w, job.n, k, p0, np, scratch),
        Panels::Rows(WeightRef::Bf16(w)) => pack_rows(w, job.n, k, p0, np, scratch),
        Panels::F32(_) | Panels::Bf16(_) | Panels::Blocks(..) => {
            unreachable!("packed panels are read directly")
        }
    }
}

/// Runs one tile over every reduction chunk and writes its outputs: rows `i .. i + mr`,
/// panels `p0 .. p0 + np`.
fn tile_chunks(isa: Isa, job: &Job<'_>, i: usize, mr: usize, p0: usize, np: usize, src: Src) {
    let k = job.k;
    let ld = np * PANEL;
    let len = mr * ld;
    debug_assert!(len <= MAX_OUT);
    // Left uninitialised: every kernel writes all `len` sums of its tile before they are
    // read, and zeroing two 1 KiB arrays per tile showed up as a memset in profiles.
    let mut out = [MaybeUninit::<f32>::uninit(); MAX_OUT];
    let mut total = [MaybeUninit::<f32>::uninit(); MAX_OUT];
    let (out, total) = (
        out.as_mut_ptr().cast::<f32>(),
        total.as_mut_ptr().cast::<f32>(),
    );
    let pstride = match src {
        Src::Blocks(f, _) => quant::panel_bytes(f, k),
        #[cfg(target_arch = "x86_64")]
        Src::Wide(..) => k / BLOCK * super::blocks_x86::WIDE_BLOCK,
        Src::F32(_) => PANEL * k,
        Src::Pairs(_) => PANEL * pairs_len(k),
        Src::RowsF32(_) | Src::RowsBf16(_) => k,
    };
    let fold = job.partial_stride == 0;
    let (mut c0, mut ci) = (0usize, 0usize);
    loop {
        let c1 = c0.saturating_add(job.chunk).min(k);
        // Rows i.. of x in the one form the kernel reads: the bf16 instruction reads pairs
        // (rows `ldx` apart there), every other kernel f32 rows.
        let (x, xb) = if job.xb.is_empty() {
            (job.x[i * job.ldx..].as_ptr(), std::ptr::null())
        } else {
            (std::ptr::null(), job.xb[i * job.ldx..].as_ptr())
        };
        let (xq, xd, xs) = match job.xq {
            Some(q) => {
                let at = i * (job.ldx / BLOCK);
                let ptrs = (q.q[i * job.ldx..].as_ptr(), q.d[at..].as_ptr());
                (ptrs.0, ptrs.1, q.s[at..].as_ptr())
            }
            None => (std::ptr::null(), std::ptr::null(), std::ptr::null()),
        };
        let args = TileArgs {
            x,
            xb,
            xq,
            xd,
            xs,
            ldx: job.ldx,
            mr,
            pstride,
            np,
            k0: c0,
            k1: c1,
            // A fold's first chunk goes straight to the running total.
            out: if fold && ci == 0 { total } else { out },
        };
        // SAFETY: rows i..i+mr of x hold k floats each (checked length m*k); panels
        // p0..p0+np of `src` hold `pstride` elements (bytes) each (packed or scratch of
        // that size); `out` and `total` hold mr * np * 16 <= MAX_OUT floats; `isa` came
        // from a pool, which checked it is available.
        unsafe { kernel(isa, src, &args) };
        // SAFETY: the kernel has just written all `len` floats at `args.out`.
        let sums = unsafe { std::slice::from_raw_parts(args.out, len) };
        if !fold {
            write_partials(job, ci, i, mr, p0 * PANEL, ld, sums);
        } else if ci > 0 {
            // SAFETY: chunk 0 wrote all `len` floats of `total`, a buffer apart from `out`.
            let total = unsafe { std::slice::from_raw_parts_mut(total, len) };
            // The same element-wise adds, in chunk order, a vector of sums at a time.
            for (t, s) in total.iter_mut().zip(sums) {
                *t += *s;
            }
        }
        ci += 1;
        c0 = c1;
        if c0 >= k {
            break;
        }
    }
    if fold {
        // SAFETY: chunk 0 wrote all `len` floats of `total`.
        let total = unsafe { std::slice::from_raw_parts(total, len) };
        write_rows(job, i, mr, p0 * PANEL, ld, total);
    }
}

/// Writes a tile's folded sums (plus the bias) to rows `i .. i + mr` of y, from column `j0`.
fn write_rows(job: &Job<'_>, i: usize, mr: usize, j0: usize, ld: usize, total: &[f32]) {
    let ncols = ld.min(job.n - j0);
    for r in 0..mr {
        let row = &total[r * ld..r * ld + ncols];
        // SAFETY: columns j0 .. j0 + ncols of row i + r are inside y (i + r < m,
        // j0 + ncols <= n) and belong to this thread's columns, which no other thread writes.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(job.y.0.add((i + r) * job.n + j0), ncols) };
        match job.bias {
            Some(b) => {
                for ((d, s), bias) in dst.iter_mut().zip(row).zip(&b[j0..j0 + ncols]) {
                    *d = s + bias;
                }
            }
            None => copy_sums(dst, row),
        }
    }
}

/// `dst.copy_from_slice(src)` a panel row (16 floats, a fixed size) at a time: a tile row is
/// too short for the call to `memcpy` that a copy of run-time length becomes.
#[inline(always)]
fn copy_sums(dst: &mut [f32], src: &[f32]) {
    let (mut d, mut s) = (dst.chunks_exact_mut(PANEL), src.chunks_exact(PANEL));
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; PANEL] = s.try_into().expect("chunks_exact gives whole panels");
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Writes chunk `ci`'s sums of a tile (`out`, rows `ld` apart) to the chunk's slab.
fn write_partials(
    job: &Job<'_>,
    ci: usize,
    i: usize,
    mr: usize,
    j0: usize,
    ld: usize,
    out: &[f32],
) {
    let ncols = ld.min(job.n - j0);
    for r in 0..mr {
        let at = ci * job.partial_stride + (i + r) * job.n + j0;
        // SAFETY: chunk ci's slab holds (i + r, j0 .. j0 + ncols), columns of this thread's.
        let dst = unsafe { std::slice::from_raw_parts_mut(job.y.0.add(at), ncols) };
        copy_sums(dst, &out[r * ld..r * ld + ncols]);
    }
}

/// Calls `isa`'s tile kernel for the element type of `src`.
///
/// # Safety
/// `args` must describe readable x rows and panels and a writable `out` of
/// `mr * np * 16` floats, `(mr, np)` must fit `isa`'s shape, and `isa` must be available.
unsafe fn kernel(isa: Isa, src: Src, args: &TileArgs) {
    match isa {
        // SAFETY (all arms): forwarded from our own contract.
        Isa::Scalar => match src {
            Src::F32(w) => unsafe { scalar::tile(w, args) },
            Src::Pairs(w) => unsafe { pairs::tile_scalar(w, args) },
            Src::Blocks(f, w) => unsafe { blocks::tile(f, w, args) },
            Src::RowsF32(_) | Src::RowsBf16(_) => {
                unreachable!("the portable path reads rows through scratch")
            }
            #[cfg(target_arch = "x86_64")]
            Src::Wide(..) => unreachable!("only the AVX2 path widens panels"),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match src {
            Src::F32(w) => unsafe { super::x86_avx2::tile(w, args) },
            Src::Pairs(w) => unsafe { super::x86_avx2::tile_pairs(w, args) },
            Src::Blocks(f, w) => unsafe { super::blocks_x86::tile_avx2(f, w, args) },
            Src::Wide(f, w) => unsafe { super::blocks_x86::tile_avx2_wide(f, w, args) },
            Src::RowsF32(w) => unsafe { super::rows_x86::gemv_rows_avx2(w, args) },
            Src::RowsBf16(w) => unsafe { super::rows_x86::gemv_rows_avx2(w, args) },
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => match src {
            Src::F32(w) => unsafe { super::x86_avx512::tile(w, args) },
            Src::Pairs(w) if isa == Isa::Avx512Bf16 => unsafe {
                super::x86_avx512::tile_pairs_dot(w, args)
            },
            Src::Pairs(w) => unsafe { super::x86_avx512::tile_pairs(w, args) },
            Src::Blocks(f, w) => unsafe { super::blocks_x86::tile_avx512(f, w, args) },
            Src::Wide(..) => unreachable!("only the AVX2 path widens panels"),
            Src::RowsF32(w) => unsafe { super::rows_x86::gemv_rows_avx512(w, args) },
            Src::RowsBf16(w) => unsafe { super::rows_x86::gemv_rows_avx512(w, args) },
        },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => {
            unreachable!("x86 paths are never available here")
        }
    }
}
