//! The compressed weight formats of ALGORITHMS.md §13 on the reference: round trips, the
//! product against a direct sum over the masked weight, and the errors for bad input. The
//! GPU backends run the same cases through the op table in their own test files.

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::formats::{self, round_to_f16};
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::{Backend, KernelError, Mask, Matrix, WeightFormat};

const FORMATS: [WeightFormat; 3] = [
    WeightFormat::Dense,
    WeightFormat::TwoFour,
    WeightFormat::Bitmap,
];

/// A 2:4-valid mask (each group keeps 0, 1 or 2) with a row pruned whole.
fn two_four_mask(rows: usize, cols: usize, seed: u64) -> Mask {
    let mut rng = Rng::new(seed);
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for g in 0..cols / 4 {
            let keep = (rng.uniform() * 3.0) as usize; // 0, 1 or 2 kept
            let first = (rng.uniform() * 4.0) as usize % 4;
            for i in 0..4 {
                let kept = (i + 4 - first) % 4 < keep && r != rows / 2;
                m.set(r, 4 * g + i, !kept);
            }
        }
    }
    m
}

fn weight(rows: usize, cols: usize, seed: u64) -> Matrix {
    round_to_f16(&heavy_tailed(rows, cols, seed))
}

#[test]
fn every_format_round_trips_bit_for_bit() {
    for (rows, cols) in [(1, 4), (7, 36), (13, 300), (3, 64)] {
        let w = weight(rows, cols, 1);
        let mask = two_four_mask(rows, cols, 2);
        let truth = formats::masked_f16(&w, &mask);
        for f in FORMATS {
            let p = formats::compress(&w, &mask, f).unwrap();
            p.check_layout().unwrap();
            let back = formats::decompress(&p).unwrap();
            let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&truth), "{} {rows}x{cols}", f.name());
        }
    }
}

#[test]
fn the_mask_decides_not_the_value() {
    // A kept zero stays stored; a pruned non-zero is dropped.
    let mut w = weight(2, 8, 3);
    w.data[1] = 0.0;
    let mut mask = Mask::empty(2, 8);
    mask.set(0, 0, true);
    let p = formats::compress(&w, &mask, WeightFormat::Bitmap).unwrap();
    assert_eq!(p.offsets, vec![0, 7, 15]);
    assert_eq!(p.meta[0], 0xFE);
    assert_eq!(formats::half_at(&p.values, 0), 0.0);
}

#[test]
fn two_four_stores_pytorchs_indices_and_kept_zeros() {
    let w = Matrix::new(1, 8, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
    let mut mask = Mask::empty(1, 8);
    // Group 0 keeps columns 1 and 3; group 1 keeps only column 4.
    for c in [0, 2, 5, 6, 7] {
        mask.set(0, c, true);
    }
    let p = formats::compress(&w, &mask, WeightFormat::TwoFour).unwrap();
    assert_eq!(p.meta[0] & 0xFF, 0b1101 | 0b1100 << 4);
    assert_eq!(formats::half_at(&p.values, 0), 2.0);
    assert_eq!(formats::half_at(&p.values, 1), 4.0);
    // PyTorch's [T, F, F, F] stores indices 0 and 3: the value and a kept zero.
    assert_eq!(formats::half_at(&p.values, 2), 5.0);
    assert_eq!(formats::half_at(&p.values, 3), 0.0);
}

#[test]
fn the_reference_product_is_the_masked_sum() {
    let b = CpuBackend::new();
    let (rows, cols, n) = (11, 68, 3);
    let w = weight(rows, cols, 4);
    let mask = two_four_mask(rows, cols, 5);
    let x = heavy_tailed(n, cols, 6);
    for f in FORMATS {
        let p = b
            .upload_packed(&formats::compress(&w, &mask, f).unwrap())
            .unwrap();
        let y = b
            .download(&b.sparse_matmul(&b.upload(&x).unwrap(), &p).unwrap())
            .unwrap();
        assert_eq!(y.shape(), (n, rows));
        for t in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .filter(|&c| !mask.get(r, c))
                    .map(|c| w.get(r, c) as f64 * x.get(t, c) as f64)
                    .sum();
                let got = y.get(t, r) as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{} y[{t},{r}] = {got}, want {want}",
                    f.name()
                );
            }
        }
    }
}

fn message(e: KernelError) -> String {
    e.to_string()
}

#[test]
fn bad_input_is_refused_with_where_and_why() {
    let b = CpuBackend::new();
    let w = weight(4, 8, 7);
    // Row 2, group 1 keeps three of four.
    let mut mask = two_four_mask(4, 8, 8);
    for c in 4..8 {
        mask.set(2, c, c == 4);
    }
    mask.set(1, 0, false);
    let e = message(formats::compress(&w, &mask, WeightFormat::TwoFour).unwrap_err());
    assert!(
        e.contains("not 2:4") && e.contains("row 2, group 1") && e.contains("columns 4..=7"),
        "{e}"
    );
    let e = message(
        formats::compress(&weight(2, 6, 1), &Mask::empty(2, 6), WeightFormat::TwoFour).unwrap_err(),
    );
    assert!(e.contains("multiple of 4, got 6"), "{e}");
    let e = message(formats::compress(&w, &Mask::empty(4, 9), WeightFormat::Bitmap).unwrap_err());
    assert!(e.contains("mask is 4x9 but the weight is 4x8"), "{e}");
    let mut big = w.clone();
    big.data[13] = 1e6;
    let e = message(formats::compress(&big, &Mask::empty(4, 8), WeightFormat::Dense).unwrap_err());
    assert!(e.contains("row 1, column 5") && e.contains("f16"), "{e}");
    // ... unless it is pruned: the mask drops it before any rounding.
    let mut m = Mask::empty(4, 8);
    m.set(1, 5, true);
    assert!(formats::compress(&big, &m, WeightFormat::Bitmap).is_ok());
    // N = 0 and a width mismatch in the product.
    let p = b
        .upload_packed(&formats::compress(&w, &Mask::empty(4, 8), WeightFormat::Dense).unwrap())
        .unwrap();
    let e = message(b.sparse_matmul(&b.zeros(0, 8).unwrap(), &p).unwrap_err());
    assert!(e.contains("N = 0"), "{e}");
    let e = message(b.sparse_matmul(&b.zeros(2, 7).unwrap(), &p).unwrap_err());
    assert!(e.contains("7 columns but the weight has 8"), "{e}");
    // A malformed upload is refused before any kernel could read past a buffer.
    let mut bad = formats::compress(&w, &Mask::empty(4, 8), WeightFormat::Bitmap).unwrap();
    bad.offsets.pop();
    assert!(b.upload_packed(&bad).is_err());
}
