//! Paged attention's unit tests: the live-row ranges, bit-for-bit equality with the
//! contiguous kernel on a mixed batch (and of a bf16 pool with its f32 widening), and
//! rejected block tables.

use super::*;
use crate::{attention, AttentionShape};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Scatters a contiguous cache `[pos][hkv][d]` into blocks given by a shuffled table.
fn scatter(contig: &[f32], slot: usize, bs: usize, table: &[u32], pool: &mut [f32]) {
    for (p, row) in contig.chunks_exact(slot).enumerate() {
        let at = (table[p / bs] as usize * bs + p % bs) * slot;
        pool[at..at + slot].copy_from_slice(row);
    }
}

#[test]
fn live_rows_are_exactly_the_rows_that_see_a_key_of_the_run() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..2000 {
        let first_pos: usize = rng.random_range(0..100);
        let rows: usize = rng.random_range(1..70);
        let j = rng.random_range(0..first_pos + rows);
        let run = rng.random_range(1..=(first_pos + rows - j).min(20));
        let window = [None, Some(1), Some(rng.random_range(1..50))][rng.random_range(0..3)];
        let want: Vec<usize> = (0..rows)
            .filter(|&i| {
                let pos = first_pos + i;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                (j..j + run).any(|key| lo <= key && key <= pos)
            })
            .collect();
        let got: Vec<usize> = live_rows(first_pos, rows, j, run, window).collect();
        assert_eq!(
            got, want,
            "first_pos={first_pos} rows={rows} j={j} run={run} {window:?}"
        );
    }
}

#[test]
fn paged_equals_contiguous_bitwise_for_a_mixed_batch() {
    compare_with_contiguous(8, &[0, 0, 1, 1, 1], 2, 4);
    compare_with_contiguous(16, &[0, 0, 0, 0, 0], 1, 16);
    compare_with_contiguous(64, &[0, 0, 0, 1, 1, 1], 2, 16);
    // Head widths that are not whole 16-lane vectors (the tiny test models' 4..16).
    compare_with_contiguous(6, &[0, 1, 1], 2, 4);
    compare_with_contiguous(12, &[0, 0, 0, 0], 1, 3);
}

/// The batch of sequences `(start, tokens)` with their block tables, rows in order.
fn paged_seqs<'a>(specs: &[(usize, usize)], tables: &'a [Vec<u32>]) -> Vec<PagedSeq<'a>> {
    let mut row = 0;
    specs
        .iter()
        .zip(tables)
        .map(|(&(start, t), table)| {
            let s = PagedSeq {
                row,
                tokens: t,
                start,
                block_table: table,
            };
            row += t;
            s
        })
        .collect()
}

fn compare_with_contiguous(d: usize, kv_index: &[usize], hkv: usize, bs: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let nblocks = 64;
    let hq = kv_index.len();
    let slot = hkv * d;
    // The contiguous kernel on the portable path is the expectation for every ISA's paged
    // kernel (whose decode rows score several heads per tile).
    let scalar = CpuPool::with_isa(1, Isa::Scalar).unwrap();
    let mut kp = vec![0.0f32; nblocks * bs * slot];
    let mut vp = vec![0.0f32; nblocks * bs * slot];
    let mut free: Vec<u32> = (0..nblocks as u32).collect();
    // (start, tokens) per sequence: decode, prefill chunk after a past, fresh prefill.
    let specs = [(9usize, 1usize), (5, 6), (0, 7), (13, 1), (0, 24), (3, 70)];
    let mut tables = Vec::new();
    let mut conts = Vec::new();
    let mut qs = Vec::new();
    for &(start, t) in &specs {
        let n = start + t;
        let blocks = n.div_ceil(bs);
        let table: Vec<u32> = (0..blocks)
            .map(|_| free.remove(rng.random_range(0..free.len())))
            .collect();
        let kc: Vec<f32> = (0..n * slot).map(|_| rng.random_range(-1.0..1.0)).collect();
        let vc: Vec<f32> = (0..n * slot).map(|_| rng.random_range(-1.0..1.0)).collect();
        scatter(&kc, slot, bs, &table, &mut kp);
        scatter(&vc, slot, bs, &table, &mut vp);
        qs.push(
            (0..t * hq * d)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect::<Vec<f32>>(),
        );
        tables.push(table);
        conts.push((kc, vc));
    }
    for isa in Isa::available() {
        let pool = CpuPool::with_isa(2, isa).unwrap();
        for window in [None, Some(3)] {
            let seqs = paged_seqs(&specs, &tables);
            let q: Vec<f32> = qs.concat();
            let mut out = vec![f32::NAN; q.len()];
            let shape = PagedShape {
                head_dim: d,
                kv_heads: hkv,
                kv_index,
                window,
                block_size: bs,
            };
            bf16_pool_matches_its_widening(&pool, &q, (&kp, &vp), &seqs, &shape);
            paged_attention(&pool, &q, &kp, &vp, &seqs, &shape, &mut out).unwrap();
            let mut offset = 0;
            for (i, &(start, t)) in specs.iter().enumerate() {
                let mut expect = vec![0.0f32; t * hq * d];
                let cshape = AttentionShape {
                    tokens: t,
                    start,
                    head_dim: d,
                    kv_heads: hkv,
                    kv_index,
                    window,
                };
                attention(
                    &scalar,
                    &qs[i],
                    &conts[i].0,
                    &conts[i].1,
                    &cshape,
                    &mut expect,
                )
                .unwrap();
                assert_eq!(
                    &out[offset..offset + t * hq * d],
                    &expect[..],
                    "{isa:?}: sequence {i} window {window:?}"
                );
                offset += t * hq * d;
            }
        }
    }
}

/// A pool rounded to bf16 gives the bits of the f32 kernel on its exact widening.
fn bf16_pool_matches_its_widening(
    pool: &CpuPool,
    q: &[f32],
    (kp, vp): (&[f32], &[f32]),
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
) {
    let kb: Vec<bf16> = kp.iter().map(|&x| bf16::from_f32(x)).collect();
    let vb: Vec<bf16> = vp.iter().map(|&x| bf16::from_f32(x)).collect();
    let kw: Vec<f32> = kb.iter().map(|x| x.to_f32()).collect();
    let vw: Vec<f32> = vb.iter().map(|x| x.to_f32()).collect();
    let mut from_bf16 = vec![f32::NAN; q.len()];
    let mut from_f32 = vec![f32::NAN; q.len()];
    paged_attention_bf16(pool, q, &kb, &vb, seqs, shape, &mut from_bf16).unwrap();
    paged_attention(pool, q, &kw, &vw, seqs, shape, &mut from_f32).unwrap();
    let same = from_bf16
        .iter()
        .zip(&from_f32)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "{:?} window {:?}: bf16 pool differs",
        pool.isa(),
        shape.window
    );
}

#[test]
fn bad_block_ids_and_short_tables_are_rejected() {
    let pool = CpuPool::new(1).unwrap();
    let kv_index = [0usize];
    let shape = PagedShape {
        head_dim: 4,
        kv_heads: 1,
        kv_index: &kv_index,
        window: None,
        block_size: 2,
    };
    let k = vec![0.0f32; 3 * 2 * 4];
    let q = vec![0.0f32; 4];
    let mut out = vec![0.0f32; 4];
    let bad = [PagedSeq {
        row: 0,
        tokens: 1,
        start: 0,
        block_table: &[3],
    }];
    assert!(paged_attention(&pool, &q, &k, &k, &bad, &shape, &mut out).is_err());
    let short = [PagedSeq {
        row: 0,
        tokens: 1,
        start: 4,
        block_table: &[0, 1],
    }];
    assert!(paged_attention(&pool, &q, &k, &k, &short, &shape, &mut out).is_err());
}
