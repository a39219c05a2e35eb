//! x86 tile kernels over quantized panels: a 32-byte group of a panel block widens to 16
//! rows x 2 k of i16 (one `zmm`, or two `ymm` of 8 rows), `pmaddwd` multiplies it with a
//! broadcast pair of rounded x and sums each row's pair into i32, and the block ends with
//! the f32 steps of [`crate::quant::act`]. Integer sums are exact, so the order inside a
//! block is free; the f32 steps run per block in order, as in [`super::blocks`]. A batched
//! AVX2 matmul first widens each panel (codes to i16, scales to f32, [`widen_panel`]) for
//! all its row tiles: with 16 `ymm`, unpacking nibbles in the inner loop cost 11-15% of
//! Q4_1 prefill.

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};
use crate::quant::act::{block_x, BlockX};
use crate::quant::{BlockFormat, BLOCK};

/// Tile shape of the AVX-512 path over quantized panels: the f32 path's, whose shape list
/// ([`super::x86_avx512::avx512_shapes`]) both dispatch over.
pub(crate) const AVX512_SHAPE: Shape = super::x86_avx512::SHAPE;

/// Tile shape of the AVX2 path over quantized panels: GEMV tiles read the panels, GEMM
/// tiles (6 rows; 4, 5 and 6 measured within 3% of each other) a widened panel.
pub(crate) const AVX2_SHAPE: Shape = Shape {
    mr: 6,
    np: 1,
    np_gemv: 2,
};

/// The formats by kernel parameter `F`.
const FORMATS: [BlockFormat; 3] = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1];

/// Blocks ahead a one-row tile prefetches each panel stream (into L2).
const PREFETCH_BLOCKS: usize = 2;

/// Calls `$kernel::<F, MR, NP>($w, $a)` for format `$f` and the tile shape of `$a`.
macro_rules! block_tiles {
    ($kernel:ident, $f:expr, $w:expr, $a:expr, $path:literal, [$(($r:literal, $p:literal)),* $(,)?]) => {
        match ($a.mr, $a.np) {
            // SAFETY (all arms): forwarded from the calling kernel's contract.
            $(($r, $p) => match $f {
                BlockFormat::Q8_0 => unsafe { $kernel::<0, $r, $p>($w, $a) },
                BlockFormat::Q4_0 => unsafe { $kernel::<1, $r, $p>($w, $a) },
                BlockFormat::Q4_1 => unsafe { $kernel::<2, $r, $p>($w, $a) },
            },)*
            _ => unreachable!("tile {}x{} is not an {} block tile shape", $a.mr, $a.np, $path),
        }
    };
}

/// Computes one tile's chunk over quantized panels of format `f` (see [`super::blocks::tile`]).
///
/// # Safety
/// As [`super::blocks::tile`], `(mr, np)` within [`AVX512_SHAPE`], on a CPU with AVX-512
/// F/BW/VL, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn tile_avx512(f: BlockFormat, w: *const u8, a: &TileArgs) {
    macro_rules! shapes {
        ($kernel:ident) => {
            super::x86_avx512::avx512_shapes!(block_tiles, $kernel, f, w, a, "AVX-512")
        };
    }
    // std caches the CPUID answer: one atomic load per tile.
    if is_x86_feature_detected!("avx512vnni") {
        shapes!(tile512_vnni)
    } else {
        shapes!(tile512)
    }
}

/// Computes one GEMV tile's chunk over quantized panels of format `f` (see
/// [`super::blocks::tile`]); batched AVX2 matmuls run [`tile_avx2_wide`] instead.
///
/// # Safety
/// As [`super::blocks::tile`], `mr == 1` and `np <= 2`, on a CPU with AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile_avx2(f: BlockFormat, w: *const u8, a: &TileArgs) {
    block_tiles!(tile256, f, w, a, "AVX2 GEMV", [(1, 1), (1, 2)])
}

/// i16 values of one widened panel block: the quants as `pmaddwd` reads them (per pair
/// group, the low nibbles' two halves of 8 rows, then the high nibbles', or Q8_0's two
/// halves), then the 16 scales and 16 mins as f32 (64 i16 of room).
pub(crate) const WIDE_BLOCK: usize = 512 + 64;

/// Widens the `blocks` blocks of one quantized panel at `w` into `dst` ([`WIDE_BLOCK`] i16
/// per block): the codes as i16 (Q4_0's minus 8) and the f16 scales and mins as f32, so
/// the tiles of a batched matmul read them with no unpacking. The values are the ones
/// [`tile_avx2`] computes from the panel, so both give the same bits.
///
/// # Safety
/// `w` must hold `blocks` panel blocks of `f`, `dst` room for `blocks * WIDE_BLOCK` i16
/// (32-byte aligned), and the CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn widen_panel(f: BlockFormat, w: *const u8, blocks: usize, dst: *mut i16) {
    match f {
        // SAFETY (all arms): forwarded.
        BlockFormat::Q8_0 => unsafe { widen::<0>(w, blocks, dst) },
        BlockFormat::Q4_0 => unsafe { widen::<1>(w, blocks, dst) },
        BlockFormat::Q4_1 => unsafe { widen::<2>(w, blocks, dst) },
    }
}

/// [`widen_panel`] for format `F`.
///
/// # Safety
/// As [`widen_panel`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<const F: u8>(w: *const u8, blocks: usize, dst: *mut i16) {
    let fmt = FORMATS[F as usize];
    let (pbb, qa) = (fmt.panel_block_bytes(), fmt.panel_quants_at());
    for b in 0..blocks {
        let (src, out) = (w.wrapping_add(b * pbb), dst.wrapping_add(b * WIDE_BLOCK));
        for g in 0..if F == 0 { BLOCK / 2 } else { BLOCK / 4 } {
            // SAFETY: group g of block b is inside the panel (contract).
            let (lo, hi) = unsafe { group256::<F, 1>(&[src], qa, g) };
            let at = out.wrapping_add(if F == 0 { 32 * g } else { 64 * g });
            for h in 0..2 {
                // SAFETY: inside block b's WIDE_BLOCK values (contract).
                unsafe { _mm256_storeu_si256(at.add(16 * h).cast(), lo[0][h]) };
                if F != 0 {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_si256(at.add(32 + 16 * h).cast(), hi[0][h]) };
                }
            }
        }
        let scales = out.wrapping_add(512).cast::<f32>();
        for h in 0..2 {
            // SAFETY: the 16 scales (and Q4_1's 16 mins after them) open block b; the f32
            // go to the block's last 64 i16.
            unsafe {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(src.add(16 * h).cast()));
                _mm256_storeu_ps(scales.add(8 * h), d);
                if F == 2 {
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(src.add(32 + 16 * h).cast()));
                    _mm256_storeu_ps(scales.add(16 + 8 * h), m);
                }
            }
        }
    }
}

/// Computes one tile's chunk over a widened panel (see [`widen_panel`]) of format `f`.
///
/// # Safety
/// As [`super::blocks::tile`] with `np == 1` and `mr <= 6`, `w` a widened panel of
/// `k1.div_ceil(32)` blocks or more, on a CPU with AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile_avx2_wide(f: BlockFormat, w: *const i16, a: &TileArgs) {
    block_tiles!(
        tile256w,
        f,
        w,
        a,
        "AVX2 widened",
        [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]
    )
}

/// Rows `0..MR`'s operands for block `b` (cut ones copied into `tmp`).
///
/// # Safety
/// As [`block_x`] for every row.
#[inline(always)]
unsafe fn rows_x<const MR: usize>(
    a: &TileArgs,
    b: usize,
    tmp: &mut [[i16; BLOCK]; MR],
) -> [BlockX; MR] {
    let mut xs = [BlockX {
        q: std::ptr::null(),
        dx: 0.0,
        sx: 0.0,
    }; MR];
    for (r, (x, t)) in xs.iter_mut().zip(tmp.iter_mut()).enumerate() {
        // SAFETY: row r holds block b (caller's contract).
        *x = unsafe { block_x(a.xq, a.xd, a.xs, a.ldx, r, b, a.k0, a.k1, t) };
    }
    xs
}

/// The pair of rounded x at value `j` of a block, as one i32 to broadcast.
///
/// # Safety
/// `q` must hold 32 values and `j` be even, below 32.
#[inline(always)]
unsafe fn pair(q: *const i16, j: usize) -> i32 {
    // SAFETY: values j and j + 1 are inside the block (contract).
    unsafe { q.add(j).cast::<i32>().read_unaligned() }
}

/// Block `b`'s address in panels `0..NP`, prefetching ahead for a one-row tile.
#[inline(always)]
fn bases<const NP: usize>(w: *const u8, a: &TileArgs, b: usize, pbb: usize) -> [*const u8; NP] {
    let mut base = [std::ptr::null(); NP];
    for (p, at) in base.iter_mut().enumerate() {
        // `wrapping_add` keeps the address defined; the kernels read only blocks below k1.
        *at = w.wrapping_add(p * a.pstride + b * pbb);
        if a.mr == 1 {
            let ahead = at.wrapping_add(PREFETCH_BLOCKS * pbb);
            for line in (0..pbb).step_by(64) {
                // SAFETY: a prefetch never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast()) };
            }
        }
    }
    base
}

/// The `MR x NP` AVX-512 tile for format `F` (0: Q8_0, 1: Q4_0, 2: Q4_1).
///
/// # Safety
/// As [`tile_avx512`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile512<const F: u8, const MR: usize, const NP: usize>(w: *const u8, a: &TileArgs) {
    // SAFETY: forwarded; the body runs with this function's features.
    unsafe { body512::<F, MR, NP, false>(w, a) }
}

/// [`tile512`] with `vpdpwssd` (multiply, pair-sum and accumulate in one instruction).
///
/// # Safety
/// As [`tile_avx512`], on a CPU with AVX-512 VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile512_vnni<const F: u8, const MR: usize, const NP: usize>(w: *const u8, a: &TileArgs) {
    // SAFETY: forwarded; the body runs with this function's features.
    unsafe { body512::<F, MR, NP, true>(w, a) }
}

/// `s + pmaddwd(w, x)`, fused into `vpdpwssd` when `VNNI`.
///
/// # Safety
/// AVX-512 BW, and AVX-512 VNNI when `VNNI`; inlined into a function that has them.
#[inline(always)]
unsafe fn dot_pairs<const VNNI: bool>(s: __m512i, w: __m512i, x: __m512i) -> __m512i {
    if VNNI {
        // SAFETY: the caller has AVX-512 VNNI (contract).
        unsafe { _mm512_dpwssd_epi32(s, w, x) }
    } else {
        // SAFETY: the caller has AVX-512 BW (contract).
        unsafe { _mm512_add_epi32(s, _mm512_madd_epi16(w, x)) }
    }
}

/// The body of [`tile512`] and [`tile512_vnni`], inlined into each with its features.
///
/// # Safety
/// As [`tile512`], and [`dot_pairs`]'s for `VNNI`.
#[inline(always)]
#[expect(
    unused_unsafe,
    reason = "the inner blocks keep each pointer access's own reason inside the outer one"
)]
unsafe fn body512<const F: u8, const MR: usize, const NP: usize, const VNNI: bool>(
    w: *const u8,
    a: &TileArgs,
) {
    // SAFETY: every intrinsic below needs only the features of the function this body is
    // inlined into (contract); each pointer access carries its own reason.
    unsafe {
        let fmt = FORMATS[F as usize];
        let (pbb, qa) = (fmt.panel_block_bytes(), fmt.panel_quants_at());
        // The f32 sums live in `out` (touched once per block), so the registers hold the
        // integer sums of eight rows.
        for j in 0..MR * NP {
            // SAFETY: out has MR * NP * 16 floats (contract).
            unsafe { _mm512_storeu_ps(a.out.add(PANEL * j), _mm512_setzero_ps()) };
        }
        let mut tmp = [[0i16; BLOCK]; MR];
        for b in a.k0 / BLOCK..a.k1.div_ceil(BLOCK) {
            // SAFETY: rows 0..MR hold block b (b * 32 < k1).
            let xs = unsafe { rows_x::<MR>(a, b, &mut tmp) };
            let base = bases::<NP>(w, a, b, pbb);
            let mut sums = [[_mm512_setzero_si512(); NP]; MR];
            if F == 0 {
                for g in 0..BLOCK / 2 {
                    let mut wv = [_mm512_setzero_si512(); NP];
                    for (v, at) in wv.iter_mut().zip(&base) {
                        // SAFETY: group g of block b's quants is inside panel p.
                        *v = _mm512_cvtepi8_epi16(unsafe {
                            _mm256_loadu_si256(at.add(qa + 32 * g).cast())
                        });
                    }
                    for (x, row) in xs.iter().zip(sums.iter_mut()) {
                        // SAFETY: 2g < 32.
                        let xv = _mm512_set1_epi32(unsafe { pair(x.q, 2 * g) });
                        for (s, v) in row.iter_mut().zip(&wv) {
                            // SAFETY: the features of the function this body is inlined into.
                            *s = unsafe { dot_pairs::<VNNI>(*s, *v, xv) };
                        }
                    }
                }
            } else {
                let (nib, eight) = (_mm512_set1_epi16(0xF), _mm512_set1_epi16(8));
                for g in 0..BLOCK / 4 {
                    let (mut lo, mut hi) =
                        ([_mm512_setzero_si512(); NP], [_mm512_setzero_si512(); NP]);
                    for p in 0..NP {
                        // SAFETY: group g of block b's quants is inside panel p.
                        let raw = unsafe { _mm256_loadu_si256(base[p].add(qa + 32 * g).cast()) };
                        let v = _mm512_cvtepu8_epi16(raw);
                        // Zero-extended bytes: the high nibble needs only the shift.
                        (lo[p], hi[p]) = (_mm512_and_si512(v, nib), _mm512_srli_epi16::<4>(v));
                        if F == 1 {
                            lo[p] = _mm512_sub_epi16(lo[p], eight);
                            hi[p] = _mm512_sub_epi16(hi[p], eight);
                        }
                    }
                    for (x, row) in xs.iter().zip(sums.iter_mut()) {
                        // SAFETY: 2g and 16 + 2g are even and below 32.
                        let (xl, xh) = unsafe { (pair(x.q, 2 * g), pair(x.q, 16 + 2 * g)) };
                        let (xl, xh) = (_mm512_set1_epi32(xl), _mm512_set1_epi32(xh));
                        for p in 0..NP {
                            // SAFETY: the features of the function this body is inlined into.
                            row[p] = unsafe {
                                dot_pairs::<VNNI>(dot_pairs::<VNNI>(row[p], lo[p], xl), hi[p], xh)
                            };
                        }
                    }
                }
            }
            for p in 0..NP {
                // SAFETY: the 16 scales (and Q4_1's 16 mins after them) open block b of panel p.
                let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(base[p].cast()) });
                let m = if F == 2 {
                    // SAFETY: as above.
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(base[p].add(32).cast()) })
                } else {
                    _mm512_setzero_ps()
                };
                for r in 0..MR {
                    let at = a.out.wrapping_add((r * NP + p) * PANEL);
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(xs[r].dx));
                    let sum = _mm512_cvtepi32_ps(sums[r][p]);
                    // SAFETY: inside out's MR * NP * 16 floats (contract).
                    let mut v = _mm512_fmadd_ps(scale, sum, unsafe { _mm512_loadu_ps(at) });
                    if F == 2 {
                        v = _mm512_fmadd_ps(m, _mm512_set1_ps(xs[r].sx), v);
                    }
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(at, v) };
                }
            }
        }
    }
}

/// The `MR x NP` AVX2 tile for format `F`: each panel's 16 rows are two halves of 8.
///
/// # Safety
/// As [`tile_avx2`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<const F: u8, const MR: usize, const NP: usize>(w: *const u8, a: &TileArgs) {
    let fmt = FORMATS[F as usize];
    let (pbb, qa) = (fmt.panel_block_bytes(), fmt.panel_quants_at());
    // The f32 sums live in `out` (touched once per block), so the registers hold the
    // integer sums of four rows.
    for j in 0..MR * NP * 2 {
        // SAFETY: out has MR * NP * 16 floats (contract).
        unsafe { _mm256_storeu_ps(a.out.add(8 * j), _mm256_setzero_ps()) };
    }
    let mut tmp = [[0i16; BLOCK]; MR];
    for b in a.k0 / BLOCK..a.k1.div_ceil(BLOCK) {
        // SAFETY: rows 0..MR hold block b (b * 32 < k1).
        let xs = unsafe { rows_x::<MR>(a, b, &mut tmp) };
        let base = bases::<NP>(w, a, b, pbb);
        let mut sums = [[[_mm256_setzero_si256(); 2]; NP]; MR];
        for g in 0..if F == 0 { BLOCK / 2 } else { BLOCK / 4 } {
            // SAFETY: group g of block b is inside every panel.
            let (lo, hi) = unsafe { group256::<F, NP>(&base, qa, g) };
            for (x, row) in xs.iter().zip(sums.iter_mut()) {
                // SAFETY: 2g (and 16 + 2g for 4-bit groups) are even and below 32.
                let xl = _mm256_set1_epi32(unsafe { pair(x.q, 2 * g) });
                let xh = _mm256_set1_epi32(if F == 0 {
                    0
                } else {
                    unsafe { pair(x.q, 16 + 2 * g) }
                });
                // Indexed loops over the constant shape unroll into registers (iterator
                // adapters over the nested arrays kept the sums in memory).
                for p in 0..NP {
                    for h in 0..2 {
                        let mut v = _mm256_add_epi32(row[p][h], _mm256_madd_epi16(lo[p][h], xl));
                        if F != 0 {
                            v = _mm256_add_epi32(v, _mm256_madd_epi16(hi[p][h], xh));
                        }
                        row[p][h] = v;
                    }
                }
            }
        }
        for p in 0..NP {
            for h in 0..2 {
                // SAFETY: the 16 scales (and Q4_1's 16 mins after them) open block b.
                let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(base[p].add(16 * h).cast()) });
                let m = if F == 2 {
                    // SAFETY: as above.
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(base[p].add(32 + 16 * h).cast()) })
                } else {
                    _mm256_setzero_ps()
                };
                let at = a.out.wrapping_add(p * PANEL + 8 * h);
                let sums = std::array::from_fn(|r| sums[r][p][h]);
                // SAFETY: rows NP * 16 floats apart inside out's MR * NP * 16 (contract).
                unsafe { scale8::<F, MR>(d, m, &xs, sums, at, NP * PANEL) };
            }
        }
    }
}

/// One block's f32 steps for 8 outputs of rows `0..MR` (row r's at `out + r * ld`):
/// `out = fma(d * dx, (f32) sum, out)`, then Q4_1's `out = fma(m, sx, out)`.
///
/// # Safety
/// 8 floats at each row's `out` must be writable; AVX2 and FMA, inlined into a function
/// that has them.
#[inline(always)]
unsafe fn scale8<const F: u8, const MR: usize>(
    d: __m256,
    m: __m256,
    xs: &[BlockX; MR],
    sums: [__m256i; MR],
    out: *mut f32,
    ld: usize,
) {
    for (r, (x, sum)) in xs.iter().zip(sums).enumerate() {
        let at = out.wrapping_add(r * ld);
        // SAFETY (all): the caller's features; `at` holds 8 floats (contract).
        unsafe {
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.dx));
            let mut v = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), _mm256_loadu_ps(at));
            if F == 2 {
                v = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sx), v);
            }
            _mm256_storeu_ps(at, v);
        }
    }
}

/// [`tile256`] over a widened panel (`NP` is 1): the same integer sums and f32 steps,
/// with the codes and scales read ready-made.
///
/// # Safety
/// As [`tile_avx2_wide`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256w<const F: u8, const MR: usize, const NP: usize>(w: *const i16, a: &TileArgs) {
    for j in 0..MR * 2 {
        // SAFETY: out has MR * 16 floats (contract).
        unsafe { _mm256_storeu_ps(a.out.add(8 * j), _mm256_setzero_ps()) };
    }
    let mut tmp = [[0i16; BLOCK]; MR];
    for b in a.k0 / BLOCK..a.k1.div_ceil(BLOCK) {
        // SAFETY: rows 0..MR hold block b (b * 32 < k1).
        let xs = unsafe { rows_x::<MR>(a, b, &mut tmp) };
        let wb = w.wrapping_add(b * WIDE_BLOCK);
        let mut sums = [[_mm256_setzero_si256(); 2]; MR];
        for g in 0..if F == 0 { BLOCK / 2 } else { BLOCK / 4 } {
            let at = wb.wrapping_add(if F == 0 { 32 * g } else { 64 * g });
            let mut lo = [_mm256_setzero_si256(); 2];
            let mut hi = lo;
            for h in 0..2 {
                // SAFETY: inside block b's widened values (contract).
                lo[h] = unsafe { _mm256_loadu_si256(at.add(16 * h).cast()) };
                if F != 0 {
                    // SAFETY: as above.
                    hi[h] = unsafe { _mm256_loadu_si256(at.add(32 + 16 * h).cast()) };
                }
            }
            for (x, row) in xs.iter().zip(sums.iter_mut()) {
                // SAFETY: 2g (and 16 + 2g for 4-bit groups) are even and below 32.
                let xl = _mm256_set1_epi32(unsafe { pair(x.q, 2 * g) });
                let xh = _mm256_set1_epi32(if F == 0 {
                    0
                } else {
                    unsafe { pair(x.q, 16 + 2 * g) }
                });
                for h in 0..2 {
                    let mut v = _mm256_add_epi32(row[h], _mm256_madd_epi16(lo[h], xl));
                    if F != 0 {
                        v = _mm256_add_epi32(v, _mm256_madd_epi16(hi[h], xh));
                    }
                    row[h] = v;
                }
            }
        }
        let scales = wb.wrapping_add(512).cast::<f32>();
        for h in 0..2 {
            // SAFETY: block b's 16 scales (and Q4_1's 16 mins) as f32 (contract).
            let d = unsafe { _mm256_loadu_ps(scales.add(8 * h)) };
            let m = if F == 2 {
                // SAFETY: as above.
                unsafe { _mm256_loadu_ps(scales.add(16 + 8 * h)) }
            } else {
                _mm256_setzero_ps()
            };
            let sums = std::array::from_fn(|r| sums[r][h]);
            // SAFETY: rows 16 floats apart inside out's MR * 16 (contract).
            unsafe { scale8::<F, MR>(d, m, &xs, sums, a.out.wrapping_add(8 * h), PANEL) };
        }
    }
}

/// Pair group `g` of one block in panels `0..NP` as i16 halves of 8 rows: the signed bytes
/// (Q8_0; `hi` unused), or the low and high nibbles (minus 8 for Q4_0).
///
/// # Safety
/// Group g of the block at every `base` must be readable (`qa` = its quants' offset).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn group256<const F: u8, const NP: usize>(
    base: &[*const u8; NP],
    qa: usize,
    g: usize,
) -> ([[__m256i; 2]; NP], [[__m256i; 2]; NP]) {
    let (nib, eight) = (_mm256_set1_epi16(0xF), _mm256_set1_epi16(8));
    let mut lo = [[_mm256_setzero_si256(); 2]; NP];
    let mut hi = lo;
    for p in 0..NP {
        for h in 0..2 {
            // SAFETY: 16 bytes of group g (contract).
            let raw = unsafe { _mm_loadu_si128(base[p].add(qa + 32 * g + 16 * h).cast()) };
            if F == 0 {
                lo[p][h] = _mm256_cvtepi8_epi16(raw);
                continue;
            }
            let v = _mm256_cvtepu8_epi16(raw);
            // Zero-extended bytes: the high nibble needs only the shift.
            (lo[p][h], hi[p][h]) = (_mm256_and_si256(v, nib), _mm256_srli_epi16::<4>(v));
            if F == 1 {
                lo[p][h] = _mm256_sub_epi16(lo[p][h], eight);
                hi[p][h] = _mm256_sub_epi16(hi[p][h], eight);
            }
        }
    }
    (lo, hi)
}
