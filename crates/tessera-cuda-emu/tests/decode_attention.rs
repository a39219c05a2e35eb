//! cuda/decode_attention.cu (bf16 cache, GQA-grouped split-K decode with a split count
//! per row, combine) on the CPU emulation against `tessera_kernels::paged_attention` over
//! the bf16-rounded pool.

mod common;

use common::paged::{Batch, Heads};
use common::*;
use half::bf16;
use tessera_cuda_emu::{kernels as k, launch, DevBuf, Placement};

fn to_bf16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Query heads of each kv head, kv head by kv head (`group_heads`), and the group size.
fn group_heads(kv_index: &[i32], hkv: usize) -> (Vec<i32>, usize) {
    let mut out = Vec::new();
    for j in 0..hkv as i32 {
        out.extend((0..kv_index.len() as i32).filter(|&h| kv_index[h as usize] == j));
    }
    (out, kv_index.len() / hkv)
}

/// Writes the new keys/values into the bf16 pool, runs the split and combine kernels
/// over `items` (the decode rows when `None`) with `splits[i]` splits for item i; returns
/// (output, bf16 key pool bits).
#[allow(
    clippy::too_many_lines,
    reason = "one launch sequence (kv write, split, combine) read top to bottom"
)]
fn run(b: &Batch, items: Option<&[i32]>, splits: &[i32], place: Placement) -> (Vec<f32>, Vec<u16>) {
    let h = b.host_rows();
    let Heads { d, hq, hkv, window } = b.heads;
    let kvw = (hkv * d) as i32;
    let (qd, stride) = ((hq * d) as i32, b.stride as i32);
    let dqkv = dev(&b.qkv, place);
    let (mut dk, mut dv) = (
        dev(&to_bf16(&b.k_pool), place),
        dev(&to_bf16(&b.v_pool), place),
    );
    let (kp, vp) = (dk.mut_ptr(), dv.mut_ptr());
    let slots = dev(&h.slots, place);
    launch([b.rows as u32, 1, 1], [128, 1, 1], || unsafe {
        k::kv_write_bf16(dqkv.ptr(), stride, qd, qd + kvw, kvw, slots.ptr(), kp, vp)
    })
    .expect("kv_write_bf16");

    let (gh, group) = group_heads(&b.kv_index, hkv);
    let mut off = vec![0i32];
    for &s in splits {
        off.push(off.last().copied().unwrap_or(0) + s * hq as i32);
    }
    let parts = *off.last().expect("one offset") as usize;
    let (pos, toff, tabs) = (
        dev(&h.positions, place),
        dev(&h.table_off, place),
        dev(&h.tables, place),
    );
    let (rows, rs, po, dgh) = (
        dev(items.unwrap_or(&h.decode_rows), place),
        dev(splits, place),
        dev(&off, place),
        dev(&gh, place),
    );
    let (mut pm, mut pl, mut pa) = (
        poisoned(parts, place),
        poisoned(parts, place),
        poisoned(parts * d, place),
    );
    let (pmp, plp, pap) = (pm.mut_ptr(), pl.mut_ptr(), pa.mut_ptr());
    let items = items.map_or(h.decode_rows.len(), <[i32]>::len) as u32;
    let most = *splits.iter().max().expect("a row") as u32;
    let (bs, win, scale) = (
        b.block_size as i32,
        window.unwrap_or(0) as i32,
        1.0 / (d as f32).sqrt(),
    );
    launch([items, hkv as u32, most], [128, 1, 1], || unsafe {
        k::decode_attention_bf16(
            dqkv.ptr(),
            stride,
            0,
            dk.ptr(),
            dv.ptr(),
            tabs.ptr(),
            toff.ptr(),
            pos.ptr(),
            rows.ptr(),
            rs.ptr(),
            po.ptr(),
            dgh.ptr(),
            group as i32,
            d as i32,
            hkv as i32,
            bs,
            win,
            scale,
            pmp,
            plp,
            pap,
        )
    })
    .expect("decode_attention_bf16");
    let mut out = poisoned(b.rows * hq * d, place);
    let o = out.mut_ptr();
    launch(
        [items, hq as u32, 1],
        [(d.div_ceil(32) * 32) as u32, 1, 1],
        || unsafe {
            k::decode_attention_combine_f32(
                pm.ptr(),
                pl.ptr(),
                pa.ptr(),
                rows.ptr(),
                rs.ptr(),
                po.ptr(),
                dgh.ptr(),
                d as i32,
                o,
            )
        },
    )
    .expect("combine");
    (out.to_vec(), dk.to_vec())
}

/// Decode rows at these context lengths with these split counts, in both placements.
fn check(heads: Heads, contexts: &[usize], splits: &[i32], seed: u64) {
    let seqs: Vec<(usize, usize)> = contexts.iter().map(|&c| (c - 1, 1)).collect();
    for (i, place) in PLACES.into_iter().enumerate() {
        let b = Batch::new(&mut rng(seed + i as u64), heads, seqs.clone(), 16);
        let (got, k_bits) = run(&b, None, splits, place);
        let (kc, vc, q) = b.written();
        assert_eq!(k_bits, to_bf16(&kc), "kv_write_bf16 {heads:?}");
        let want = b.reference(&q, &rounded(&kc), &rounded(&vc));
        assert_close(
            &format!("decode bf16 {heads:?} {contexts:?} splits {splits:?}"),
            &got,
            &want,
            1e-4,
        );
    }
}

#[test]
fn gqa_groups_of_four_with_per_row_splits_match_cpu() {
    // Llama-3-8B's grouping (32/8 heads) at a quarter: a row of one key, rows with more
    // splits than keys (empty splits), uneven chunks and partial blocks.
    let heads = Heads {
        d: 128,
        hq: 8,
        hkv: 2,
        window: None,
    };
    check(heads, &[1, 3, 17, 300, 777, 64], &[1, 5, 2, 7, 16, 1], 300);
}

#[test]
fn odd_groups_and_widths_with_a_window_match_cpu() {
    check(
        Heads {
            d: 64,
            hq: 9,
            hkv: 3,
            window: None,
        },
        &[100, 513, 2],
        &[3, 4, 2],
        310,
    );
    check(
        Heads {
            d: 80,
            hq: 5,
            hkv: 5,
            window: Some(300),
        },
        &[700, 299, 301],
        &[6, 1, 2],
        320,
    );
    check(
        Heads {
            d: 256,
            hq: 8,
            hkv: 1,
            window: None,
        },
        &[40, 129],
        &[2, 3],
        330,
    );
}

#[test]
fn a_long_row_next_to_short_ones_splits_alone() {
    // One 5000-key row takes 40 splits; its neighbours keep one or two.
    check(
        Heads {
            d: 32,
            hq: 4,
            hkv: 2,
            window: None,
        },
        &[5000, 9, 70],
        &[40, 1, 2],
        340,
    );
}

#[test]
fn prefill_rows_run_as_items_of_the_decode_kernel() {
    // tessera-cuda runs every row of a step on the bf16 pool through this kernel: a
    // prompt's rows attend to their own causal prefix of the keys just written.
    let heads = Heads {
        d: 64,
        hq: 8,
        hkv: 2,
        window: None,
    };
    let seqs = vec![(0, 37), (5, 1), (20, 9)];
    for (i, place) in PLACES.into_iter().enumerate() {
        let b = Batch::new(&mut rng(350 + i as u64), heads, seqs.clone(), 16);
        let items: Vec<i32> = (0..b.rows as i32).collect();
        let splits: Vec<i32> = items.iter().map(|&r| 1 + r % 3).collect();
        let (got, _) = run(&b, Some(&items), &splits, place);
        let (kc, vc, q) = b.written();
        let want = b.reference(&q, &rounded(&kc), &rounded(&vc));
        assert_close("prefill rows as decode items", &got, &want, 1e-4);
    }
}

/// The tiled prefill kernel over the bf16 pool (after `kv_write_bf16`) for a batch of
/// prompts; returns the output of every prefill row (decode rows are left poisoned).
fn run_prefill_bf16(b: &Batch, place: Placement) -> Vec<f32> {
    let h = b.host_rows();
    let Heads { d, hq, hkv, window } = b.heads;
    let kvw = (hkv * d) as i32;
    let (qd, stride) = ((hq * d) as i32, b.stride as i32);
    let dqkv = dev(&b.qkv, place);
    let (mut dk, mut dv) = (
        dev(&to_bf16(&b.k_pool), place),
        dev(&to_bf16(&b.v_pool), place),
    );
    let (kp, vp) = (dk.mut_ptr(), dv.mut_ptr());
    let slots = dev(&h.slots, place);
    launch([b.rows as u32, 1, 1], [128, 1, 1], || unsafe {
        k::kv_write_bf16(dqkv.ptr(), stride, qd, qd + kvw, kvw, slots.ptr(), kp, vp)
    })
    .expect("kv_write_bf16");
    let (pos, toff, tabs) = (
        dev(&h.positions, place),
        dev(&h.table_off, place),
        dev(&h.tables, place),
    );
    let (tf, tr, kvi) = (
        dev(&h.tile_first, place),
        dev(&h.tile_rows, place),
        dev(&b.kv_index, place),
    );
    let mut out = poisoned(b.rows * hq * d, place);
    let o = out.mut_ptr();
    let (win, scale) = (window.unwrap_or(0) as i32, 1.0 / (d as f32).sqrt());
    let grid = [h.tile_first.len() as u32, hq as u32, 1];
    launch(grid, [128, 1, 1], || unsafe {
        k::prefill_attention_bf16(
            dqkv.ptr(),
            stride,
            0,
            dk.ptr(),
            dv.ptr(),
            tabs.ptr(),
            toff.ptr(),
            pos.ptr(),
            tf.ptr(),
            tr.ptr(),
            kvi.ptr(),
            d as i32,
            hkv as i32,
            b.block_size as i32,
            win,
            scale,
            o,
        )
    })
    .expect("prefill_attention_bf16");
    out.to_vec()
}

#[test]
fn tiled_prefill_over_the_bf16_pool_matches_cpu() {
    let heads = Heads {
        d: 64,
        hq: 8,
        hkv: 2,
        window: Some(40),
    };
    // Prompts with partial tiles and blocks, one continuing after cached keys.
    let seqs = vec![(0, 37), (20, 9), (3, 16)];
    for (i, place) in PLACES.into_iter().enumerate() {
        let b = Batch::new(&mut rng(360 + i as u64), heads, seqs.clone(), 16);
        let got = run_prefill_bf16(&b, place);
        let (kc, vc, q) = b.written();
        let want = b.reference(&q, &rounded(&kc), &rounded(&vc));
        assert_close("prefill bf16", &got, &want, 1e-4);
    }
}

#[test]
fn a_write_into_the_bf16_cache_rounds_to_nearest_even() {
    let v = [
        1.0f32,
        1.0 + 1.0 / 256.0, // halfway: to even (down)
        1.0 + 3.0 / 256.0, // halfway: to even (up)
        -3.3e38,
        f32::MIN_POSITIVE,
        65504.0,
    ];
    let qkv: Vec<f32> = v.iter().chain(v.iter()).copied().collect();
    let slots = dev(&[1i32], Placement::End);
    let dq = dev(&qkv, Placement::End);
    let mut kc = DevBuf::filled(12, 0u16, Placement::End).expect("memory");
    let mut vc = DevBuf::filled(12, 0u16, Placement::End).expect("memory");
    let (kp, vp) = (kc.mut_ptr(), vc.mut_ptr());
    launch([1, 1, 1], [32, 1, 1], || unsafe {
        k::kv_write_bf16(dq.ptr(), 12, 0, 6, 6, slots.ptr(), kp, vp)
    })
    .expect("launch");
    assert_eq!(&kc.to_vec()[6..], to_bf16(&v).as_slice());
    assert_eq!(&vc.to_vec()[6..], to_bf16(&v).as_slice());
    assert_eq!(&kc.to_vec()[..6], &[0u16; 6]);
}
