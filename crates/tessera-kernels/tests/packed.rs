//! Weights packed once give the bits of the reference (f32: the row-major matmul's; bf16:
//! the pair order of `matmul_bf16_reference`), on every path, batch size, thread count and
//! chunking.

mod common;

use common::{bits, pools, rng, uniform, uniform_bf16};
use tessera_kernels::{
    matmul_bf16_reference, matmul_chunked_reference, matmul_packed, matmul_packed_chunked,
    ChunkOutput, KernelError, PackedMatrix, PackedWeight, WeightRef,
};

#[test]
fn packed_matmul_equals_reference_bitwise_for_f32_and_bf16() {
    let pools = pools(&[1, 2, 3]);
    for (case, (m, k, n)) in [
        (1, 576, 300),
        (1, 7, 17),
        (9, 130, 33),
        (64, 77, 45),
        (13, 5, 1),
        // Odd k and more rows than k: rounded bf16 rows (k + 1 apart) reach past m * k.
        (20, 3, 17),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rng(900 + case as u64);
        let x = uniform(&mut r, m * k);
        let w = uniform(&mut r, n * k);
        let wb = uniform_bf16(&mut r, n * k);
        let bias = uniform(&mut r, n);
        for wr in [WeightRef::F32(&w), WeightRef::Bf16(&wb)] {
            let packed = PackedMatrix::pack(wr, n, k).unwrap();
            assert_eq!((packed.rows(), packed.cols()), (n, k));
            for chunk in [usize::MAX, 32, 24] {
                let mut want = vec![0.0; m * n];
                let out = ChunkOutput::Fold;
                match wr {
                    WeightRef::F32(_) => matmul_chunked_reference(
                        &x,
                        m,
                        k,
                        wr,
                        n,
                        Some(&bias),
                        chunk,
                        out,
                        &mut want,
                    ),
                    WeightRef::Bf16(w) => {
                        matmul_bf16_reference(&x, m, k, w, n, Some(&bias), chunk, out, &mut want)
                    }
                }
                .unwrap();
                for pool in &pools {
                    let mut got = vec![f32::NAN; m * n];
                    matmul_packed_chunked(pool, &x, m, &packed, Some(&bias), chunk, out, &mut got)
                        .unwrap();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{pool:?} m={m} k={k} n={n} {chunk}"
                    );
                }
            }
        }
    }
}

#[test]
fn packed_rows_are_bit_identical_alone_and_in_any_batch() {
    let (k, n) = (96, 70);
    let mut r = rng(901);
    let x = uniform(&mut r, 40 * k);
    let packed = PackedMatrix::pack_bf16(&uniform_bf16(&mut r, n * k), n, k).unwrap();
    assert_eq!(packed.weight(), PackedWeight::Bf16);
    for pool in pools(&[1, 2]) {
        let mut alone = vec![0.0; 40 * n];
        for i in 0..40 {
            let y = &mut alone[i * n..(i + 1) * n];
            matmul_packed(&pool, &x[i * k..(i + 1) * k], 1, &packed, None, y).unwrap();
        }
        for m in [2, 7, 8, 9, 40] {
            let mut y = vec![0.0; m * n];
            matmul_packed(&pool, &x[..m * k], m, &packed, None, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&alone[..m * n]), "{pool:?} m={m}");
        }
    }
}

#[test]
fn packing_and_packed_matmul_refuse_wrong_lengths() {
    let err = PackedMatrix::pack_f32(&[0.0; 10], 3, 4).unwrap_err();
    assert!(
        matches!(err, KernelError::Length { what: "w", .. }),
        "{err}"
    );
    let packed = PackedMatrix::pack_f32(&[0.0; 12], 3, 4).unwrap();
    let pool = tessera_kernels::CpuPool::new(1).unwrap();
    let mut y = vec![0.0; 3];
    let err = matmul_packed(&pool, &[0.0; 5], 1, &packed, None, &mut y).unwrap_err();
    assert!(
        matches!(err, KernelError::Length { what: "x", .. }),
        "{err}"
    );
    let err = matmul_packed(&pool, &[0.0; 4], 1, &packed, Some(&[0.0; 2]), &mut y).unwrap_err();
    assert!(
        matches!(err, KernelError::Length { what: "bias", .. }),
        "{err}"
    );
    // bf16 weights reduce k in pairs: a chunk that would split one is refused.
    let bf = PackedMatrix::pack_bf16(&[half::bf16::ONE; 12], 3, 4).unwrap();
    let out = ChunkOutput::Fold;
    let err = matmul_packed_chunked(&pool, &[0.0; 4], 1, &bf, None, 3, out, &mut y).unwrap_err();
    assert!(
        matches!(err, KernelError::Invalid { what: "chunk", .. }),
        "{err}"
    );
    matmul_packed_chunked(&pool, &[1.0; 4], 1, &bf, None, 2, out, &mut y).unwrap();
    assert_eq!(y, [4.0; 3]);
}

#[test]
fn rows_read_back_from_panels_equal_the_packed_rows() {
    let mut r = rng(950);
    let (rows, cols) = (37, 23);
    let w = uniform(&mut r, rows * cols);
    let wb = uniform_bf16(&mut r, rows * cols);
    let widened: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    for (packed, want) in [
        (PackedMatrix::pack_f32(&w, rows, cols).unwrap(), &w),
        (PackedMatrix::pack_bf16(&wb, rows, cols).unwrap(), &widened),
    ] {
        let mut out = vec![f32::NAN; cols];
        for row in 0..rows {
            packed.row_into(row, &mut out).unwrap();
            assert_eq!(
                bits(&out),
                bits(&want[row * cols..(row + 1) * cols]),
                "row {row}"
            );
        }
        let past_end = packed.row_into(rows, &mut out);
        assert!(
            matches!(past_end, Err(KernelError::Invalid { .. })),
            "{past_end:?}"
        );
        let short = packed.row_into(0, &mut out[1..]);
        assert!(short.is_err(), "a short output is refused");
    }
}
