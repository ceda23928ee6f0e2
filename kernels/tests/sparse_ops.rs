//! The compressed weight formats (dense f16, 2:4, bitmap) and their products on each GPU
//! backend, written once and instantiated per backend by `sparse_tests!`: every sparse case,
//! weights split across bindings, long rows and many rows, f16 rounding (ties, subnormals,
//! the largest finite values) packed into the reference's words and decompressed bit for bit,
//! and bad compressions, uploads and products refused with the reference's errors.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::{bits, run_cases, small_cases_named};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::formats;
use prunebench_kernels::plan::{self, groups::DEFAULT_FILL};
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::suite::{small_sparse_cases, CaseFormat, MaskSource, Op, OpCase};
use prunebench_kernels::{Backend, KernelError, Mask, Matrix, Sparsity, WeightFormat};

const FORMATS: [WeightFormat; 3] = [
    WeightFormat::Dense,
    WeightFormat::TwoFour,
    WeightFormat::Bitmap,
];

fn every_sparse_case_runs_and_matches_the_reference<B: TestBackend>() {
    let cases = small_cases_named(&["COMPRESS", "MATMUL"]);
    assert_eq!(cases.len(), small_sparse_cases().len());
    run_cases(&B::plain(), &cases);
}

/// Weights of 40 x 300 at an 8 KiB binding limit: W (f32) in slabs of 6 rows, packed
/// weights in slabs of 13 (dense, bitmap) or 25 rows (2:4), bitmap values in windows that
/// start mid-word.
fn compressed_weights_in_windows<B: TestBackend>() {
    let b = B::plain().with_limit(8 << 10);
    let holes = MaskSource::Holes(0.6);
    let two_four = MaskSource::Wanda(Sparsity::NM { n: 2, m: 4 });
    let mut cases = Vec::new();
    for (f, cf, m) in [
        (WeightFormat::Dense, CaseFormat::Dense, holes),
        (WeightFormat::TwoFour, CaseFormat::TwoFour, two_four),
        (WeightFormat::Bitmap, CaseFormat::Bitmap, holes),
    ] {
        cases.push(OpCase::new(Op::Compress(f, m), 40, 300));
        // 150 tokens: the tiled kernels, over windows of a few tokens.
        for n in [3, 17, 150] {
            let op = Op::Matmul {
                format: cf,
                mask: m,
                n,
            };
            cases.push(OpCase::new(op, 40, 300));
        }
    }
    run_cases(&b, &cases);
    b.assert_split_seen();
}

/// Shapes past one of each kernel's internal blocks: rows longer than one staged chunk of X
/// (4096 columns at one token, 512 at eight) and than one round of 256 units per cube, more
/// rows than one thread of the offsets scan takes (rows > 256), token counts that leave a
/// partial block.
fn long_rows_and_many_rows_match_the_reference<B: TestBackend>() {
    use CaseFormat::{Bitmap, Dense, TwoFour};
    use MaskSource::{Holes, None, Wanda};
    let b = B::fresh();
    let s24 = Sparsity::NM { n: 2, m: 4 };
    let p = |x| Sparsity::Unstructured(x);
    let matmul =
        |format, mask, n, rows, cols| OpCase::new(Op::Matmul { format, mask, n }, rows, cols);
    let cases = vec![
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Holes(0.3)), 3, 8300),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Wanda(s24)), 3, 8300),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Wanda(p(0.5))), 600, 40),
        matmul(Bitmap, Wanda(p(0.7)), 1, 70, 4500),
        matmul(Bitmap, Holes(0.5), 9, 70, 4500),
        matmul(Bitmap, None, 5, 3, 8300),
        matmul(TwoFour, Wanda(s24), 2, 40, 4500),
        matmul(TwoFour, Wanda(s24), 12, 40, 1100),
        matmul(Dense, None, 8, 33, 4500),
        matmul(Dense, None, 1, 300, 4200),
        // The tiled kernels (from 128 tokens) over many 32-column chunks.
        matmul(Bitmap, Wanda(p(0.5)), 130, 70, 1100),
        matmul(TwoFour, Wanda(s24), 140, 40, 1100),
        matmul(Dense, None, 129, 33, 1100),
    ];
    run_cases(&b, &cases);
}

/// Products whose workgroups fall short of the device's fill split their columns into
/// parts summed by a second pass (`plan::column_parts`): a ragged last bitmap unit, one and
/// eight tokens, rows that are no multiple of a workgroup's, a token's row in one staged
/// chunk, and 130 tokens on the tiled kernels (chunks of 32 columns). The plan is asserted for both backends' chunk widths (the
/// blocked kernels stage X as 2048 or 4096 values per block) at 8 rows per blocked
/// workgroup, the fewest either takes.
fn products_short_of_workgroups_split_over_columns<B: TestBackend>() {
    use CaseFormat::{Bitmap, Dense, TwoFour};
    use MaskSource::{Holes, None, Wanda};
    let s24 = Sparsity::NM { n: 2, m: 4 };
    let shapes: [(usize, usize, usize); 5] = [
        (3, 37, 2100),
        (1, 37, 8300),
        (1, 37, 3000),
        (8, 70, 3000),
        (130, 70, 2100),
    ];
    for &(n, rows, cols) in &shapes {
        let splits = |groups, chunk| plan::column_parts(groups, cols, chunk, DEFAULT_FILL).0 > 1;
        if plan::sparse_tiled(n) {
            let tiles =
                rows.div_ceil(plan::SPARSE_TILE_ROWS) * n.div_ceil(plan::SPARSE_TILE_TOKENS);
            assert!(splits(tiles, 32), "{n} x {rows} x {cols}");
        } else {
            let tb = n.next_power_of_two();
            // A row in one 4096-value chunk is staged 2048 at a time where it would split.
            for stage in [2048, 4096] {
                let groups = rows.div_ceil(8) * n.div_ceil(tb);
                let one_chunk = stage == 4096 && cols <= stage / tb;
                assert!(
                    one_chunk || splits(groups, stage / tb),
                    "{n} x {rows} x {cols} at {stage}"
                );
            }
        }
    }
    let mut cases = Vec::new();
    for (n, rows, cols) in shapes {
        for (format, mask) in [
            (Dense, None),
            (TwoFour, Wanda(s24)),
            (Bitmap, Holes(0.6)),
            (Bitmap, Wanda(Sparsity::Unstructured(0.5))),
        ] {
            cases.push(OpCase::new(Op::Matmul { format, mask, n }, rows, cols));
        }
    }
    run_cases(&B::fresh(), &cases);
}

// ---- f16 rounding and packing ----

/// A mask keeping columns 4g + (r mod 3) and 4g + 3 of every group: 2:4 everywhere.
fn two_four_mask(rows: usize, cols: usize) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, c % 4 != r % 3 && c % 4 != 3);
        }
    }
    m
}

/// Values that are not f16 round to the nearest (ties to even) as on the reference, the
/// largest finite ones and subnormals included.
fn compression_rounds_as_the_reference<B: TestBackend>() {
    let edge = [
        65519.0,
        -65519.0,
        65504.0,
        1.0 + 1.0 / 2048.0,              // a tie: to even (1.0)
        1.0 + 3.0 / 2048.0,              // a tie: to even (1 + 2/1024)
        2f32.powi(-25),                  // a tie with zero: 0
        3.0 * 2f32.powi(-26),            // just above: the smallest subnormal
        2f32.powi(-14) - 2f32.powi(-26), // rounds up to the smallest normal
        1e-30,
        -0.0,
        0.0,
        1e-40,
    ];
    let rows = 7;
    let cols = 36;
    let mut w = heavy_tailed(rows, cols, 5);
    for (i, v) in w.data.iter_mut().enumerate() {
        *v *= 10f32.powi((i % 10) as i32 - 8);
    }
    w.data[..edge.len()].copy_from_slice(&edge);
    let mask = two_four_mask(rows, cols);
    let cpu = CpuBackend::new();
    let b = B::plain();
    let wt = b.upload(&w).unwrap();
    for (f, mask) in [
        (WeightFormat::Dense, Mask::empty(rows, cols)),
        (WeightFormat::TwoFour, mask.clone()),
        (WeightFormat::Bitmap, Mask::empty(rows, cols)),
        (WeightFormat::Bitmap, mask),
    ] {
        let want = cpu.compress(&cpu.upload(&w).unwrap(), &mask, f).unwrap();
        let p = b.compress(&wt, &b.upload_mask(&mask).unwrap(), f).unwrap();
        assert_eq!(b.download_packed(&p).unwrap(), want, "{}", f.name());
        let back = b.download(&b.decompress(&p).unwrap()).unwrap();
        let truth = formats::masked_f16(&w, &mask);
        assert_eq!(bits(&back), bits(&truth), "{}", f.name());
    }
}

/// Weights that are not f16 values (every exponent from f16 subnormals to the largest finite
/// f16, exact ties, kept zeros) compress to the reference's words in every format, and
/// decompress to the masked f16 weight bit for bit.
fn compression_rounds_and_packs_like_the_reference<B: TestBackend>() {
    let b = B::fresh();
    let cpu = CpuBackend::new();
    let (rows, cols) = (7, 100);
    let mut rng = Rng::new(11);
    let mut w = Matrix::from_fn(rows, cols, |_, _| {
        let e = rng.uniform() * 42.0 - 27.0;
        let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        (sign * 2f64.powf(e)).clamp(-65519.0, 65519.0) as f32
    });
    w.data[3] = 1.0 + 1.0 / 2048.0;
    w.data[5] = 65519.99;
    w.data[8] = 0.0;
    w.data[9] = -0.0;
    w.data[10] = 2.980_232_2e-8;
    // Pruned entries may hold anything: they are dropped by the mask, never read as values.
    w.data[2 * cols + 1] = f32::NAN;
    w.data[2 * cols + 2] = 1e30;
    let mut mask = Mask::empty(rows, cols);
    let mut two_four = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            mask.set(r, c, rng.uniform() < 0.4);
            // Groups keeping 0, 1 or 2 entries, in every arrangement.
            let g = (r * cols + c) / 4;
            let kept = [
                [false; 4],
                [true, false, false, false],
                [false, false, true, true],
            ][g % 3];
            two_four.set(r, c, !kept[(c + g) % 4]);
        }
    }
    for (r, c) in [(2, 1), (2, 2)] {
        mask.set(r, c, true);
        two_four.set(r, c, true);
    }
    for (format, m) in [
        (WeightFormat::Dense, &mask),
        (WeightFormat::TwoFour, &two_four),
        (WeightFormat::Bitmap, &mask),
    ] {
        let want = formats::compress(&w, m, format).unwrap();
        let p = b
            .compress(&b.upload(&w).unwrap(), &b.upload_mask(m).unwrap(), format)
            .unwrap();
        assert_eq!(b.download_packed(&p).unwrap(), want, "{}", format.name());
        let d = b.download(&b.decompress(&p).unwrap()).unwrap();
        let truth = formats::masked_f16(&w, m);
        assert_eq!(bits(&d), bits(&truth), "{} decompression", format.name());
        // The uploaded reference decodes the same way.
        let up = b.upload_packed(&want).unwrap();
        assert_eq!(b.download(&b.decompress(&up).unwrap()).unwrap(), d);
        let cpu_p = cpu.compress(&cpu.upload(&w).unwrap(), m, format).unwrap();
        assert_eq!(cpu_p, want);
    }
}

// ---- refusals ----

/// Compresses on both sides; both must fail with the same error, which is returned.
fn same_error<B: TestBackend>(w: &Matrix, mask: &Mask, format: WeightFormat) -> KernelError {
    let (cpu, gpu) = (CpuBackend::new(), B::plain());
    let want = cpu
        .compress(&cpu.upload(w).unwrap(), mask, format)
        .expect_err("the reference refuses");
    let got = match gpu.compress(
        &gpu.upload(w).unwrap(),
        &gpu.upload_mask(mask).unwrap(),
        format,
    ) {
        Err(e) => e,
        Ok(_) => panic!(
            "{}: compressed what the reference refuses ({want})",
            format.name()
        ),
    };
    assert_eq!(got.to_string(), want.to_string(), "{}", format.name());
    assert_eq!(
        std::mem::discriminant(&got),
        std::mem::discriminant(&want),
        "{}",
        format.name()
    );
    got
}

fn bad_input_to_compression_gives_the_references_errors<B: TestBackend>() {
    let w = formats::round_to_f16(&heavy_tailed(6, 16, 1));
    // Not 2:4: row 3 keeps 3 of group 2, row 4 all of group 0; the first is reported.
    let mut mask = two_four_mask(6, 16);
    mask.set(3, 8 + 1, false);
    mask.set(3, 8 + 2, false);
    for c in 0..4 {
        mask.set(4, c, false);
    }
    let e = same_error::<B>(&w, &mask, WeightFormat::TwoFour);
    assert!(e.to_string().contains("not 2:4: row 3, group 2"), "{e}");

    let w10 = formats::round_to_f16(&heavy_tailed(3, 10, 2));
    let e = same_error::<B>(&w10, &Mask::empty(3, 10), WeightFormat::TwoFour);
    assert!(matches!(e, KernelError::InvalidArgument(_)), "{e}");

    for f in FORMATS {
        let e = same_error::<B>(&w, &Mask::empty(6, 20), f);
        assert!(matches!(e, KernelError::Shape(_)), "{e}");
    }

    // Kept values f16 cannot hold: the first in row order is named, a pruned one is ignored,
    // and it comes before a 2:4 error earlier in the matrix.
    let mut bad = w.clone();
    let mut mask = two_four_mask(6, 16);
    bad.data[16 + 4 * 2] = 1e6; // row 1: pruned
    bad.data[2 * 16 + 6] = 1e6; // row 2, column 6: kept
    bad.data[4 * 16 + 3] = f32::NAN; // kept, later
    bad.data[5 * 16 + 7] = f32::INFINITY; // kept, later
    assert!(mask.get(1, 8) && !mask.get(2, 6) && !mask.get(4, 3) && !mask.get(5, 7));
    for f in FORMATS {
        let e = same_error::<B>(&bad, &mask, f);
        assert!(e.to_string().contains("row 2, column 6"), "{e}");
    }
    mask.set(0, 0, false);
    mask.set(0, 1, false);
    assert!(!mask.get(0, 3));
    let e = same_error::<B>(&bad, &mask, WeightFormat::TwoFour);
    assert!(e.to_string().contains("row 2, column 6"), "{e}");
    // NaN alone.
    let mut nan = w.clone();
    nan.data[4 * 16 + 3] = f32::NAN;
    let e = same_error::<B>(&nan, &Mask::empty(6, 16), WeightFormat::Bitmap);
    assert!(e.to_string().contains("row 4, column 3"), "{e}");
}

fn bad_input_to_the_product_is_an_error<B: TestBackend>() {
    let b = B::plain();
    let w = formats::round_to_f16(&heavy_tailed(5, 16, 3));
    let p = formats::compress(&w, &Mask::empty(5, 16), WeightFormat::Bitmap).unwrap();
    let packed = b.upload_packed(&p).unwrap();
    let none = b.zeros(0, 16).unwrap();
    match b.sparse_matmul(&none, &packed) {
        Err(KernelError::Shape(msg)) => assert!(msg.contains("N = 0"), "{msg}"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    let x = b.upload(&heavy_tailed(2, 15, 4)).unwrap();
    assert!(matches!(
        b.sparse_matmul(&x, &packed).map(|_| ()),
        Err(KernelError::Shape(_))
    ));
    // A layout that does not add up is refused before anything reads it.
    let mut short = p.clone();
    short.values.pop();
    assert!(matches!(
        b.upload_packed(&short).map(|_| ()),
        Err(KernelError::Shape(_))
    ));
    let mut moved = p;
    moved.offsets[2] += 1;
    match b.upload_packed(&moved) {
        Err(KernelError::InvalidArgument(msg)) => assert!(msg.contains("bitmap row 1"), "{msg}"),
        other => panic!("expected an error, got {:?}", other.map(|_| ())),
    }
}

/// Bad compressions and products are refused with the reference's errors: the first group
/// keeping more than 2 of 4 (after any value error), columns not a multiple of 4, a mask of
/// another shape, a kept value outside f16, N = 0 tokens, X of other columns, malformed
/// uploads.
fn bad_compressions_and_products_get_the_reference_errors<B: TestBackend>() {
    let b = B::plain();
    let cpu = CpuBackend::new();
    let (rows, cols) = (5, 40);
    let w = Matrix::from_fn(rows, cols, |r, c| ((r * cols + c) as f32 * 0.37).sin());
    let both = |w: &Matrix, m: &Mask, format: WeightFormat| {
        let dev = b
            .compress(&b.upload(w).unwrap(), &b.upload_mask(m).unwrap(), format)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let reference = cpu
            .compress(&cpu.upload(w).unwrap(), m, format)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(dev, reference, "{}", format.name());
        dev
    };
    // 2:4 everywhere but row 3 group 6 (3 kept) and row 4 group 1 (4 kept).
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, c % 4 < 2);
        }
    }
    m.set(3, 25, false);
    m.set(4, 4, false);
    m.set(4, 5, false);
    let e = both(&w, &m, WeightFormat::TwoFour);
    assert_eq!(e, formats::not_two_four(3, 6).to_string());
    assert!(e.contains("row 3, group 6 (columns 24..=27)"), "{e}");

    // A kept 1e6 (after the bad group in row order) is reported first; so is NaN; a pruned
    // one is not an error.
    let mut big = w.clone();
    big.data[4 * cols + 34] = 1e6;
    let e = both(&big, &m, WeightFormat::TwoFour);
    assert_eq!(e, formats::outside_f16(4, 34).to_string());
    for format in [WeightFormat::Dense, WeightFormat::Bitmap] {
        let e = both(&big, &Mask::empty(rows, cols), format);
        assert_eq!(e, formats::outside_f16(4, 34).to_string());
    }
    let mut nan = w.clone();
    nan.data[2 * cols + 7] = f32::NAN;
    nan.data[3 * cols + 1] = f32::INFINITY;
    let e = both(&nan, &Mask::empty(rows, cols), WeightFormat::Bitmap);
    assert_eq!(e, formats::outside_f16(2, 7).to_string());
    let mut pruned = Mask::empty(rows, cols);
    pruned.set(4, 34, true);
    assert!(b
        .compress(
            &b.upload(&big).unwrap(),
            &b.upload_mask(&pruned).unwrap(),
            WeightFormat::Dense
        )
        .is_ok());

    // Columns not a multiple of 4, a mask of another shape.
    let odd = Matrix::from_fn(3, 38, |r, c| (r + c) as f32);
    let e = both(&odd, &Mask::empty(3, 38), WeightFormat::TwoFour);
    assert!(e.contains("multiple of 4, got 38"), "{e}");
    for format in FORMATS {
        let e = both(&w, &Mask::empty(rows, cols + 4), format);
        assert!(e.contains("mask is 5x44 but the weight is 5x40"), "{e}");
    }

    // Uploads whose buffers do not fit the layout, and a bitmap whose offsets disagree
    // with its bits.
    let mut short = formats::compress(&w, &Mask::empty(rows, cols), WeightFormat::Dense).unwrap();
    short.values.pop();
    assert!(matches!(
        b.upload_packed(&short).map(|_| ()),
        Err(KernelError::Shape(_))
    ));
    let bitmap = formats::compress(&w, &m, WeightFormat::Bitmap).unwrap();
    let mut wrong = bitmap.clone();
    wrong.offsets[2] += 1;
    assert!(matches!(
        b.upload_packed(&wrong).map(|_| ()),
        Err(KernelError::InvalidArgument(_))
    ));
    assert!(b.upload_packed(&bitmap).is_ok());

    // Products: N = 0 and X with other columns.
    let p = b
        .compress(
            &b.upload(&w).unwrap(),
            &b.upload_mask(&Mask::empty(rows, cols)).unwrap(),
            WeightFormat::Dense,
        )
        .unwrap();
    let host = b.download_packed(&p).unwrap();
    for x in [Matrix::zeros(0, cols), Matrix::zeros(2, cols + 1)] {
        let dev = b
            .sparse_matmul(&b.upload(&x).unwrap(), &p)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let reference = cpu
            .sparse_matmul(&cpu.upload(&x).unwrap(), &host)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(dev, reference);
    }
    let e = b
        .sparse_matmul(&b.upload(&Matrix::zeros(0, cols)).unwrap(), &p)
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("N = 0 tokens"), "{e}");
}

/// The tests of every body for backend `$B`, with the attributes in `windows` on those whose
/// tensors come in 8 KiB windows.
macro_rules! sparse_tests {
    ($B:ty, windows: $windows:tt) => {
        instantiate!(
            $B,
            [],
            every_sparse_case_runs_and_matches_the_reference,
            long_rows_and_many_rows_match_the_reference,
            products_short_of_workgroups_split_over_columns,
            compression_rounds_as_the_reference,
            compression_rounds_and_packs_like_the_reference,
            bad_input_to_compression_gives_the_references_errors,
            bad_input_to_the_product_is_an_error,
            bad_compressions_and_products_get_the_reference_errors,
        );
        instantiate!($B, $windows, compressed_weights_in_windows);
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    sparse_tests!(prunebench_kernels::wgpu::WgpuBackend, windows: []);
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    sparse_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        windows: [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ]
    );
}
