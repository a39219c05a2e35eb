//! Row-major weights packed into f32 panels on the fly (16 output rows, k-major), a panel
//! group at a time, for matmuls whose weights were not packed at load.

use super::drive::PANEL;
use super::Elem;

/// Packs rows `16 p0 ..` of a row-major `[n, k]` matrix into `np` f32 panels, zero rows
/// past `n`.
pub(crate) fn pack_rows<E: Elem>(
    w: &[E],
    n: usize,
    k: usize,
    p0: usize,
    np: usize,
    out: &mut [f32],
) {
    for (p, panel) in out.chunks_exact_mut(PANEL * k).take(np).enumerate() {
        let first = (p0 + p) * PANEL;
        let live = n.saturating_sub(first).min(PANEL);
        if live == PANEL {
            // The next panel's rows, to prefetch while this one is packed (16 short row
            // streams are too many for the hardware prefetcher to pick up from DRAM).
            let next = w.get((first + PANEL) * k..(first + 2 * PANEL) * k);
            pack_full_panel(&w[first * k..(first + PANEL) * k], k, next, panel);
            continue;
        }
        for (kk, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (o, d) in dst.iter_mut().enumerate() {
                *d = if o < live {
                    w[(first + o) * k + kk].to_f32()
                } else {
                    0.0
                };
            }
        }
    }
}

/// Packs 16 full rows (`rows`, row-major `16 x k`) into one f32 panel, through 16 x 16
/// tiles so that both the reads and the writes are contiguous runs.
fn pack_full_panel<E: Elem>(rows: &[E], k: usize, next: Option<&[E]>, panel: &mut [f32]) {
    let mut tile = [[0.0f32; PANEL]; PANEL];
    for k0 in (0..k).step_by(PANEL) {
        let kw = PANEL.min(k - k0);
        if let Some(next) = next {
            for o in 0..PANEL {
                prefetch(&next[o * k + k0]);
            }
        }
        for (o, t) in tile.iter_mut().enumerate() {
            for (d, v) in t[..kw].iter_mut().zip(&rows[o * k + k0..o * k + k0 + kw]) {
                *d = v.to_f32();
            }
        }
        for (kk, dst) in panel[k0 * PANEL..(k0 + kw) * PANEL]
            .chunks_exact_mut(PANEL)
            .enumerate()
        {
            for (d, t) in dst.iter_mut().zip(&tile) {
                *d = t[kk];
            }
        }
    }
}

/// Asks the CPU to bring the cache line holding `v` closer (a hint; no effect elsewhere).
#[inline(always)]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, and `v` is a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (v as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}
