//! cuda/paged_attention.cu (kv_write, split decode + reduce, tiled prefill) on the CPU
//! emulation against `tessera_kernels::paged_attention`: GQA groups, odd head counts, a
//! sliding window, partial blocks and tiles, several splits, a context past 64 splits,
//! chunked prefill after a cached prefix, decode and prefill rows in one batch.

mod common;

use common::paged::{Batch, Heads, HostRows};
use common::*;
use tessera_cuda_emu::{kernels as k, launch, DevBuf, Placement};

/// The device buffers and sizes both attention kernels read.
struct Inputs {
    qkv: DevBuf<f32>,
    k_pool: DevBuf<f32>,
    v_pool: DevBuf<f32>,
    tables: DevBuf<i32>,
    table_off: DevBuf<i32>,
    positions: DevBuf<i32>,
    kv_index: DevBuf<i32>,
    stride: i32,
    block_size: i32,
    window: i32,
    scale: f32,
}

/// Runs kv_write then the attention kernels the way `tessera_cuda::ops` launches them;
/// returns (output, key pool after the writes).
fn run(b: &Batch, place: Placement) -> (Vec<f32>, Vec<f32>) {
    let h = b.host_rows();
    let Heads { d, hq, hkv, window } = b.heads;
    let kvw = (hkv * d) as i32;
    let mut inp = Inputs {
        qkv: dev(&b.qkv, place),
        k_pool: dev(&b.k_pool, place),
        v_pool: dev(&b.v_pool, place),
        tables: dev(&h.tables, place),
        table_off: dev(&h.table_off, place),
        positions: dev(&h.positions, place),
        kv_index: dev(&b.kv_index, place),
        stride: b.stride as i32,
        block_size: b.block_size as i32,
        window: window.unwrap_or(0) as i32,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let slots = dev(&h.slots, place);
    let (kp, vp) = (inp.k_pool.mut_ptr(), inp.v_pool.mut_ptr());
    let (stride, qd) = (inp.stride, (hq * d) as i32);
    launch([b.rows as u32, 1, 1], [128, 1, 1], || unsafe {
        k::kv_write_f32(
            inp.qkv.ptr(),
            stride,
            qd,
            qd + kvw,
            kvw,
            slots.ptr(),
            kp,
            vp,
        )
    })
    .expect("kv_write");
    let mut out = poisoned(b.rows * hq * d, place);
    if !h.tile_first.is_empty() {
        run_prefill(&inp, b, &h, place, &mut out);
    }
    if !h.decode_rows.is_empty() {
        run_decode(&inp, b, &h, place, &mut out);
    }
    (out.to_vec(), inp.k_pool.to_vec())
}

/// The tiled prefill kernel over the batch's prefill tiles.
fn run_prefill(inp: &Inputs, b: &Batch, h: &HostRows, place: Placement, out: &mut DevBuf<f32>) {
    let Heads { d, hq, hkv, .. } = b.heads;
    let (tf, tr) = (dev(&h.tile_first, place), dev(&h.tile_rows, place));
    let o = out.mut_ptr();
    launch(
        [h.tile_first.len() as u32, hq as u32, 1],
        [128, 1, 1],
        || unsafe {
            k::prefill_attention_f32(
                inp.qkv.ptr(),
                inp.stride,
                0,
                inp.k_pool.ptr(),
                inp.v_pool.ptr(),
                inp.tables.ptr(),
                inp.table_off.ptr(),
                inp.positions.ptr(),
                tf.ptr(),
                tr.ptr(),
                inp.kv_index.ptr(),
                d as i32,
                hkv as i32,
                inp.block_size,
                inp.window,
                inp.scale,
                o,
            )
        },
    )
    .expect("prefill_attention");
}

/// The split decode kernel over the batch's decode rows, then the reduce of its partials.
fn run_decode(inp: &Inputs, b: &Batch, h: &HostRows, place: Placement, out: &mut DevBuf<f32>) {
    let Heads { d, hq, hkv, .. } = b.heads;
    let parts = h.decode_rows.len() * hq * h.splits;
    let rows = dev(&h.decode_rows, place);
    let (mut pm, mut pl, mut pa) = (
        poisoned(parts, place),
        poisoned(parts, place),
        poisoned(parts * d, place),
    );
    let (pmp, plp, pap) = (pm.mut_ptr(), pl.mut_ptr(), pa.mut_ptr());
    let grid = [h.decode_rows.len() as u32, hq as u32, h.splits as u32];
    launch(grid, [128, 1, 1], || unsafe {
        k::paged_attention_split_f32(
            inp.qkv.ptr(),
            inp.stride,
            0,
            inp.k_pool.ptr(),
            inp.v_pool.ptr(),
            inp.tables.ptr(),
            inp.table_off.ptr(),
            inp.positions.ptr(),
            rows.ptr(),
            inp.kv_index.ptr(),
            d as i32,
            hkv as i32,
            inp.block_size,
            inp.window,
            h.split_len as i32,
            inp.scale,
            pmp,
            plp,
            pap,
        )
    })
    .expect("split");
    let threads = (d.div_ceil(32) * 32) as u32;
    let o = out.mut_ptr();
    launch([grid[0], grid[1], 1], [threads, 1, 1], || unsafe {
        k::paged_attention_reduce_f32(
            pm.ptr(),
            pl.ptr(),
            pa.ptr(),
            rows.ptr(),
            d as i32,
            h.splits as i32,
            o,
        )
    })
    .expect("reduce");
}

fn check(heads: Heads, seqs: Vec<(usize, usize)>, seed: u64) {
    for (i, place) in PLACES.into_iter().enumerate() {
        let b = Batch::new(&mut rng(seed + i as u64), heads, seqs.clone(), 16);
        let (got, k_after) = run(&b, place);
        let (kc, vc, q) = b.written();
        assert_eq!(k_after, kc, "kv_write {heads:?}");
        assert_close(
            &format!("attention {heads:?} {seqs:?}"),
            &got,
            &b.reference(&q, &kc, &vc),
            1e-4,
        );
    }
}

#[test]
fn decode_with_gqa_groups_and_several_splits_matches_cpu() {
    let seqs = vec![(700, 1), (3, 1), (255, 1), (256, 1), (0, 1), (517, 1)];
    check(
        Heads {
            d: 64,
            hq: 9,
            hkv: 3,
            window: None,
        },
        seqs.clone(),
        100,
    );
    check(
        Heads {
            d: 128,
            hq: 8,
            hkv: 2,
            window: None,
        },
        seqs,
        110,
    );
}

#[test]
fn decode_with_odd_head_width_and_window_matches_cpu() {
    check(
        Heads {
            d: 80,
            hq: 5,
            hkv: 5,
            window: Some(300),
        },
        vec![(700, 1), (100, 1), (299, 1)],
        120,
    );
}

#[test]
fn decode_past_64_splits_grows_the_splits_and_matches_cpu() {
    // 16_900 keys: 67 splits wanted, so 64 splits of 512 keys.
    check(
        Heads {
            d: 32,
            hq: 2,
            hkv: 1,
            window: None,
        },
        vec![(16_900, 1), (40, 1)],
        130,
    );
}

#[test]
fn prefill_tiles_and_chunked_prefill_match_cpu() {
    // Tiles of 16 rows over several key tiles, a chunk after a cached prefix, a one-token
    // prompt and a decode row, in one batch.
    let seqs = vec![(0, 45), (20, 30), (0, 1), (0, 100), (300, 1)];
    check(
        Heads {
            d: 64,
            hq: 9,
            hkv: 3,
            window: None,
        },
        seqs,
        140,
    );
    check(
        Heads {
            d: 128,
            hq: 4,
            hkv: 2,
            window: Some(37),
        },
        vec![(0, 70), (50, 33), (5, 1)],
        150,
    );
}
