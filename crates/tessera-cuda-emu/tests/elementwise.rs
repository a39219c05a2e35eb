//! cuda/activation.cu, embedding.cu, random.cu and rope.cu on the CPU emulation against
//! CPU references, with the launch shapes of `tessera-cuda`'s wrappers.

mod common;

use common::*;
use half::{bf16, f16};
use rand::Rng;
use tessera_cuda_emu::{kernels as k, launch};

#[test]
fn silu_mul_matches_cpu_reference() {
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(30 + seed as u64);
        let (rows, inter) = (13, 1531);
        let gu = randn(&mut rng, rows * 2 * inter, 4.0);
        let n = rows * inter;
        let (dgu, mut out) = (dev(&gu, place), poisoned(n, place));
        let o = out.mut_ptr();
        launch([blocks(n, 256), 1, 1], [256, 1, 1], || unsafe {
            k::silu_mul_f32(dgu.ptr(), o, inter as i32, n as i64)
        })
        .expect("launch");
        let mut want = Vec::with_capacity(n);
        let pool = tessera_kernels::CpuPool::new(1).expect("pool");
        for r in gu.chunks_exact(2 * inter) {
            let mut g = r[..inter].to_vec();
            tessera_kernels::silu_mul(&pool, &mut g, &r[inter..]).expect("reference");
            want.extend(g);
        }
        assert_close("silu_mul", &out.to_vec(), &want, 1e-5);
    }
}

#[test]
fn add_bias_and_casts_match_cpu() {
    for place in PLACES {
        let mut rng = rng(40);
        let (rows, n) = (5, 333);
        let (y, bias) = (randn(&mut rng, rows * n, 1.0), randn(&mut rng, n, 1.0));
        let (mut dy, db) = (dev(&y, place), dev(&bias, place));
        let p = dy.mut_ptr();
        launch([blocks(rows * n, 256), 1, 1], [256, 1, 1], || unsafe {
            k::add_bias_f32(p, db.ptr(), n as i32, (rows * n) as i64)
        })
        .expect("launch");
        let want: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
        assert_eq!(dy.to_vec(), want);

        // Casts round to nearest even, like `half`; include subnormals, overflow and NaN.
        let mut x = randn(&mut rng, 997, 100.0);
        x.extend([
            1e-6,
            -3e-8,
            7e4,
            -1e6,
            f32::NAN,
            0.0,
            -0.0,
            65504.0,
            65519.0,
        ]);
        let dx = dev(&x, place);
        let (mut b, mut h) = (
            tessera_cuda_emu::DevBuf::filled(x.len(), 0xffffu16, place).expect("memory"),
            tessera_cuda_emu::DevBuf::filled(x.len(), 0xffffu16, place).expect("memory"),
        );
        let (bp, hp) = (b.mut_ptr(), h.mut_ptr());
        let n = x.len();
        launch([blocks(n, 256), 1, 1], [256, 1, 1], || unsafe {
            k::cast_f32_bf16(dx.ptr(), bp, n as i64);
            k::cast_f32_f16(dx.ptr(), hp, n as i64);
        })
        .expect("launch");
        for (i, &v) in x.iter().enumerate() {
            let (gb, gh) = (
                bf16::from_bits(b.to_vec()[i]),
                f16::from_bits(h.to_vec()[i]),
            );
            if v.is_nan() {
                assert!(gb.is_nan() && gh.is_nan(), "NaN cast at {i}");
            } else {
                assert_eq!(gb.to_bits(), bf16::from_f32(v).to_bits(), "bf16 of {v}");
                assert_eq!(gh.to_bits(), f16::from_f32(v).to_bits(), "f16 of {v}");
            }
        }
    }
}

fn round(v: f32, dtype: &str) -> f32 {
    match dtype {
        "bf16" => bf16::from_f32(v).to_f32(),
        "f16" => f16::from_f32(v).to_f32(),
        _ => v,
    }
}

#[test]
fn embedding_gathers_only_the_ranks_vocab_span_in_each_dtype() {
    let (vocab, hidden, start, len) = (1000i32, 97usize, 300i32, 400usize);
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(50 + seed as u64);
        for dtype in ["f32", "bf16", "f16"] {
            let table = randn(&mut rng, len * hidden, 1.0);
            let mut ids: Vec<i32> = (0..50).map(|_| rng.random_range(0..vocab)).collect();
            ids.extend([start, start + len as i32 - 1, start - 1, start + len as i32]);
            let rows = ids.len();
            let (dids, mut out) = (dev(&ids, place), poisoned(rows * hidden, place));
            let o = out.mut_ptr();
            let (h, s, l) = (hidden as i32, start, len as i32);
            let grid = [rows as u32, 1, 1];
            let threads = [row_threads(hidden).min(256), 1, 1];
            match dtype {
                "f32" => {
                    let t = dev(&table, place);
                    launch(grid, threads, || unsafe {
                        k::embedding_f32(dids.ptr(), t.ptr(), o, h, s, l)
                    })
                }
                "bf16" => {
                    let bits: Vec<u16> =
                        table.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
                    let t = dev(&bits, place);
                    launch(grid, threads, || unsafe {
                        k::embedding_bf16(dids.ptr(), t.ptr(), o, h, s, l)
                    })
                }
                _ => {
                    let bits: Vec<u16> =
                        table.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
                    let t = dev(&bits, place);
                    launch(grid, threads, || unsafe {
                        k::embedding_f16(dids.ptr(), t.ptr(), o, h, s, l)
                    })
                }
            }
            .expect("launch");
            let mut want = vec![0.0f32; rows * hidden];
            for (row, &id) in want.chunks_exact_mut(hidden).zip(&ids) {
                let local = id - start;
                if (0..len as i32).contains(&local) {
                    let src = &table[local as usize * hidden..][..hidden];
                    for (o, &v) in row.iter_mut().zip(src) {
                        *o = round(v, dtype);
                    }
                }
            }
            assert_eq!(out.to_vec(), want, "embedding {dtype}");
        }
    }
}

#[test]
fn gather_rows_and_unpad_logits_move_the_right_values() {
    for place in PLACES {
        let mut rng = rng(60);
        let (rows, width) = (9, 301);
        let x = randn(&mut rng, rows * width, 1.0);
        let pick: Vec<i32> = vec![8, 0, 3, 3];
        let (dx, dp, mut out) = (
            dev(&x, place),
            dev(&pick, place),
            poisoned(4 * width, place),
        );
        let o = out.mut_ptr();
        launch([4, 1, 1], [row_threads(width).min(256), 1, 1], || unsafe {
            k::gather_rows_f32(dx.ptr(), dp.ptr(), width as i32, o)
        })
        .expect("launch");
        let want: Vec<f32> = pick
            .iter()
            .flat_map(|&r| x[r as usize * width..][..width].to_vec())
            .collect();
        assert_eq!(out.to_vec(), want);

        // Three ranks with uneven vocabulary spans, padded to the longest.
        let (starts, lens) = (vec![0i32, 334, 667], vec![334i32, 333, 333]);
        let (vocab, n_rows, block) = (1000usize, 5usize, 5 * 334usize);
        let gathered = randn(&mut rng, 3 * block, 1.0);
        let (dg, ds, dl) = (
            dev(&gathered, place),
            dev(&starts, place),
            dev(&lens, place),
        );
        let mut full = poisoned(n_rows * vocab, place);
        let f = full.mut_ptr();
        launch([n_rows as u32, 3, 1], [256, 1, 1], || unsafe {
            k::unpad_logits_f32(dg.ptr(), ds.ptr(), dl.ptr(), block as i64, vocab as i32, f)
        })
        .expect("launch");
        let mut want = vec![0.0f32; n_rows * vocab];
        for r in 0..3 {
            let len = lens[r] as usize;
            for row in 0..n_rows {
                let src = &gathered[r * block + row * len..][..len];
                want[row * vocab + starts[r] as usize..][..len].copy_from_slice(src);
            }
        }
        assert_eq!(full.to_vec(), want);
    }
}

/// The generator of random.cu, restated: splitmix64 of (seed, index).
fn uniform_at(seed: u64, i: u64, scale: f32) -> f32 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = (z >> 40) as f32 * (1.0 / 16_777_216.0);
    (2.0 * u - 1.0) * scale
}

#[test]
fn fill_uniform_depends_on_seed_and_index_only() {
    let (n, seed, scale, offset) = (1001usize, 7u64, 0.5f32, 1.0f32);
    for place in PLACES {
        let mut f = poisoned(n, place);
        let mut b = tessera_cuda_emu::DevBuf::filled(n, 0u16, place).expect("memory");
        let mut h = tessera_cuda_emu::DevBuf::filled(n, 0u16, place).expect("memory");
        let (fp, bp, hp) = (f.mut_ptr(), b.mut_ptr(), h.mut_ptr());
        launch([blocks(n, 256), 1, 1], [256, 1, 1], || unsafe {
            k::fill_uniform_f32(fp, n as i64, seed, scale, offset);
            k::fill_uniform_bf16(bp, n as i64, seed, scale, offset);
            k::fill_uniform_f16(hp, n as i64, seed, scale, offset);
        })
        .expect("launch");
        let want: Vec<f32> = (0..n as u64)
            .map(|i| offset + uniform_at(seed, i, scale))
            .collect();
        assert_eq!(f.to_vec(), want);
        let wb: Vec<u16> = want.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let wh: Vec<u16> = want.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        assert_eq!(b.to_vec(), wb);
        assert_eq!(h.to_vec(), wh);
    }
}

#[test]
fn rope_with_llama3_scaling_rotates_q_and_k_inside_qkv() {
    let (heads, kv_heads, d, max_pos, rows) = (9, 3, 128, 4096, 19);
    let inv_freq = tessera_cuda::reference::llama3_inv_freq(d).expect("frequencies");
    let table = tessera_kernels::RopeTable::new(d, max_pos, &inv_freq).expect("table");
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in 0..max_pos {
        for &f in &inv_freq {
            cos.push((pos as f32 * f).cos());
            sin.push((pos as f32 * f).sin());
        }
    }
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(70 + seed as u64);
        let stride = (heads + 2 * kv_heads) * d + 3;
        let qkv = randn(&mut rng, rows * stride, 1.0);
        let mut positions: Vec<usize> = (0..rows).map(|_| rng.random_range(0..max_pos)).collect();
        positions[0] = max_pos - 1;
        let pos32: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let (mut dqkv, dpos) = (dev(&qkv, place), dev(&pos32, place));
        let (dcos, dsin) = (dev(&cos, place), dev(&sin, place));
        let x = dqkv.mut_ptr();
        for (col, h) in [(0, heads), (heads * d, kv_heads)] {
            launch(
                [rows as u32, h as u32, 1],
                [(d / 2).clamp(32, 1024) as u32, 1, 1],
                || unsafe {
                    k::rope_f32(
                        x,
                        stride as i32,
                        col as i32,
                        d as i32,
                        dpos.ptr(),
                        dcos.ptr(),
                        dsin.ptr(),
                    )
                },
            )
            .expect("launch");
        }
        let mut want = qkv.clone();
        for (cols, h) in [
            (0..heads * d, heads),
            (heads * d..(heads + kv_heads) * d, kv_heads),
        ] {
            let mut part: Vec<f32> = want
                .chunks_exact(stride)
                .flat_map(|r| r[cols.clone()].to_vec())
                .collect();
            tessera_kernels::rope(&mut part, h, d, &positions, &table).expect("reference");
            for (row, p) in want.chunks_exact_mut(stride).zip(part.chunks_exact(h * d)) {
                row[cols.clone()].copy_from_slice(p);
            }
        }
        assert_close("rope q+k in qkv", &dqkv.to_vec(), &want, 1e-6);
    }
}
