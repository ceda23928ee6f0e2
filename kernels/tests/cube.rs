//! The CubeCL backend beyond the shared conformance cases: the slab path for tensors larger
//! than one binding (forced on small shapes, and once for real above 128 MiB), outputs
//! poisoned with NaN before the kernels run, device limits refused before any work, numerical
//! failures reported as errors, adapter choice and device timing, and the compressed formats'
//! f16 conversions, rounding and refusals.
#![cfg(feature = "cubecl")]

use half::f16;
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};
use prunebench_kernels::formats;
use prunebench_kernels::rng::Rng;
use prunebench_kernels::suite::{
    small_cases, verify_cases, CaseFormat, MaskSource, ObsKind, Op, OpCase,
};
use prunebench_kernels::{
    Backend, GradNorm, KernelError, Mask, MaskGroup, MaskPattern, Matrix, Score, ScoreKind,
    Sparsity, TimeSource, WeightFormat,
};

fn backend() -> CubeWgpuBackend {
    cube_wgpu(None).expect(
        "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
    )
}

/// Runs `cases` and fails listing every case that did not pass.
fn run(b: &CubeWgpuBackend, cases: &[OpCase]) {
    let failures = verify_cases(b, cases);
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const ROW: fn(f64) -> MaskPattern = |p| MaskPattern::Unstructured {
    sparsity: p,
    group: MaskGroup::PerRow,
};

/// Shapes with more rows than one 64-row slab, so that every op meets several slabs.
fn multi_slab_cases() -> Vec<OpCase> {
    use ScoreKind::{Gblm, Magnitude, Wanda};
    let matrix = |p| MaskPattern::Unstructured {
        sparsity: p,
        group: MaskGroup::Matrix,
    };
    let nm = |n, m| MaskPattern::NM { n, m };
    let mut v = vec![
        OpCase::new(Op::ActStat, 1, 296).tokens(150, 2),
        OpCase::new(Op::Hessian, 1, 200).tokens(150, 2),
        OpCase::new(Op::GradAccumulate(GradNorm::L2), 150, 296),
        OpCase::new(Op::GradFused(GradNorm::L2), 150, 296).tokens(140, 1),
        OpCase::new(Op::GradFused(GradNorm::L1), 150, 200).tokens(70, 1),
        OpCase::new(Op::Score(Gblm), 150, 296),
        OpCase::new(Op::Mask(ROW(0.5)), 150, 300),
        OpCase::new(Op::Mask(matrix(0.3)), 150, 300),
        OpCase::new(Op::Mask(nm(2, 4)), 150, 296),
        OpCase::new(Op::ApplyMask, 150, 300),
        OpCase::new(Op::Prune(Wanda, ROW(0.5)), 150, 296),
        OpCase::new(Op::Prune(Gblm, nm(2, 4)), 150, 296),
        OpCase::new(Op::Prune(Magnitude, matrix(0.5)), 150, 296),
        OpCase::new(Op::HinvFactor, 1, 200).tokens(300, 1),
        OpCase::new(Op::ReconError, 150, 200).tokens(300, 1),
    ];
    for kind in [
        ObsKind::Unstructured(0.5),
        ObsKind::NM { n: 2, m: 4 },
        ObsKind::Given(0.5),
    ] {
        v.push(OpCase::new(Op::Obs(kind), 150, 200).tokens(300, 1));
    }
    // Patterns whose groups straddle mask words (each thread then owns lcm(32, m) columns).
    v.push(OpCase::new(Op::Mask(nm(3, 12)), 150, 288));
    v.push(OpCase::new(Op::Prune(Wanda, nm(2, 6)), 150, 300));
    // Blocks that do not divide the columns and straddle slabs of U and mask words.
    v.push(
        OpCase::new(Op::Obs(ObsKind::Unstructured(0.4)), 150, 200)
            .tokens(300, 1)
            .block(96),
    );
    v.push(
        OpCase::new(Op::Obs(ObsKind::NM { n: 4, m: 8 }), 150, 200)
            .tokens(300, 1)
            .block(40),
    );
    // Compression of a split W, and products whose X (and Y) are split at other rows.
    let s24 = Sparsity::NM { n: 2, m: 4 };
    let half = Sparsity::Unstructured(0.5);
    v.push(OpCase::new(
        Op::Compress(WeightFormat::Dense, MaskSource::None),
        150,
        300,
    ));
    v.push(OpCase::new(
        Op::Compress(WeightFormat::TwoFour, MaskSource::Wanda(s24)),
        150,
        296,
    ));
    v.push(OpCase::new(
        Op::Compress(WeightFormat::Bitmap, MaskSource::Holes(0.6)),
        150,
        300,
    ));
    let matmul =
        |format, mask, n, rows, cols| OpCase::new(Op::Matmul { format, mask, n }, rows, cols);
    v.push(matmul(CaseFormat::Dense, MaskSource::None, 70, 150, 300));
    v.push(matmul(
        CaseFormat::TwoFour,
        MaskSource::Wanda(s24),
        150,
        150,
        296,
    ));
    v.push(matmul(
        CaseFormat::Bitmap,
        MaskSource::Magnitude(half),
        150,
        150,
        300,
    ));
    v
}

/// Every op through the slab path: bindings capped at 64 rows of 300 columns, so that W, X,
/// H and U of these shapes are each split in two to four slabs, with outputs poisoned.
#[test]
fn split_tensors_match_the_reference() {
    let b = backend()
        .with_binding_limit(64 * 300 * 4)
        .with_poisoned_outputs(true);
    assert!(b.slabs(150, 296).unwrap().count() >= 3);
    assert!(b.slabs(200, 200).unwrap().count() >= 3);
    let mut cases = multi_slab_cases();
    cases.extend(small_cases());
    run(&b, &cases);
}

/// Outputs start as NaN (all bits set, also in mask words); every small case must still
/// pass, and the new tensors must hold no NaN at all.
#[test]
fn poisoned_outputs_are_fully_written() {
    let b = backend().with_poisoned_outputs(true);
    let mut cases = small_cases();
    // Rows long enough that the per-row selection cannot keep them in 32 KiB of shared
    // memory (lavapipe's) and recomputes keys from global memory, and one that just fits.
    for cols in [5632, 6000] {
        cases.push(OpCase::new(Op::Mask(ROW(0.3)), 12, cols));
        cases.push(OpCase::new(Op::Prune(ScoreKind::Gblm, ROW(0.5)), 12, cols));
    }
    run(&b, &cases);
    let w = b
        .upload(&Matrix::from_fn(9, 70, |r, c| ((r * 70 + c) as f32).sin()))
        .unwrap();
    let act = b
        .upload(&Matrix::from_fn(1, 70, |_, c| 1.0 + c as f32))
        .unwrap();
    let s = b
        .download(&b.score(&w, Score::Wanda { act: &act }).unwrap())
        .unwrap();
    assert!(
        s.data.iter().all(|v| v.is_finite()),
        "unwritten score entries"
    );
    let g = b
        .download(&b.grad_finalize(&act, GradNorm::L2).unwrap())
        .unwrap();
    assert!(
        g.data.iter().all(|v| v.is_finite()),
        "unwritten gradient entries"
    );
    println!("memory budget {:?}", b.memory_budget());
    for (pattern, pruned) in [(ROW(0.5), 9 * 35), (MaskPattern::NM { n: 2, m: 5 }, 9 * 28)] {
        // A poisoned, unwritten word would set padding bits and be rejected here.
        let m = b
            .download_mask(&b.select_mask(&w, pattern).unwrap())
            .unwrap();
        assert_eq!(m.count(), pruned);
    }
}

/// A weight above 128 MiB is split for real (on lavapipe that is its binding limit; other
/// devices are capped to it) and still gives the reference's result.
#[test]
fn tensor_above_128_mib_is_split_and_correct() {
    let limit = 128u64 << 20;
    let b = backend().with_binding_limit(limit);
    let (rows, cols) = (8256, 4096);
    assert!(rows as u64 * cols as u64 * 4 > limit);
    assert_eq!(b.slabs(rows, cols).unwrap().count(), 2);
    run(
        &b,
        &[
            OpCase::new(Op::Prune(ScoreKind::Wanda, ROW(0.5)), rows, cols),
            OpCase::new(
                Op::Prune(ScoreKind::Gblm, MaskPattern::NM { n: 2, m: 4 }),
                rows,
                cols,
            ),
        ],
    );
}

#[test]
fn too_large_for_the_device_is_refused_before_any_work() {
    let b = backend();
    let budget = b
        .memory_budget()
        .expect("a Vulkan adapter reports its memory heaps");
    let (rows, cols) = (budget as usize / 4096 + 1, 1024);
    match b.zeros(rows, cols) {
        Err(KernelError::OutOfMemory {
            needed, available, ..
        }) => {
            assert_eq!(needed, (rows * cols * 4) as u64);
            assert!(available <= budget);
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|t| t.shape())),
    }
}

/// Operands split differently (made by backends with different slab limits) are refused, not
/// paired slab by slab.
#[test]
fn operands_with_different_slabs_are_refused() {
    let split = backend().with_binding_limit(64 * 300 * 4);
    let whole = backend();
    let mut w = split
        .upload(&Matrix::from_fn(150, 300, |r, c| (r * c) as f32))
        .unwrap();
    let mask = whole.upload_mask(&Mask::empty(150, 300)).unwrap();
    assert!(matches!(
        split.apply_mask(&mut w, &mask),
        Err(KernelError::InvalidArgument(_))
    ));
}

#[test]
fn indefinite_or_non_finite_hessians_are_errors() {
    let b = backend();
    // Eigenvalues −1 and 3; 1% damping cannot fix that.
    let h = b
        .upload(&Matrix::new(2, 2, vec![1.0, 2.0, 2.0, 1.0]).unwrap())
        .unwrap();
    match b.hinv_factor(&h, 0.01) {
        Err(KernelError::NotPositiveDefinite { .. }) => {}
        other => panic!(
            "expected NotPositiveDefinite, got {:?}",
            other.map(|f| f.damp)
        ),
    }
    // A larger one, failing in a later block: a rank-one matrix minus a bit of the identity.
    let n = 150;
    let m = Matrix::from_fn(n, n, |i, j| if i == j { 0.5 } else { 1.0 });
    let h = b.upload(&m).unwrap();
    assert!(matches!(
        b.hinv_factor(&h, 0.0),
        Err(KernelError::NotPositiveDefinite { .. })
    ));
    let mut bad = Matrix::from_fn(3, 3, |i, j| if i == j { 2.0 } else { 0.0 });
    bad.data[5] = f32::NAN;
    let h = b.upload(&bad).unwrap();
    match b.hinv_factor(&h, 0.01) {
        Err(KernelError::NonFinite { row, col, .. }) => assert_eq!((row, col), (1, 2)),
        other => panic!("expected NonFinite, got {:?}", other.map(|f| f.damp)),
    }
    assert!(b.hinv_factor(&h, -1.0).is_err());
}

#[test]
fn adapters_are_chosen_by_name() {
    let default = backend();
    let name = default.info().device.clone();
    let named = cube_wgpu(Some(&name.to_uppercase())).unwrap();
    assert_eq!(named.info().device, name);
    assert_eq!(named.info().backend, "cubecl-wgpu");
    match cube_wgpu(Some("no adapter is called this")) {
        Err(KernelError::Device(msg)) => assert!(msg.contains(&name), "{msg}"),
        other => panic!(
            "expected a device error, got {:?}",
            other.map(|b| b.info().device.clone())
        ),
    }
}

#[test]
fn timing_reads_the_device_clock() {
    let b = backend();
    let w = b
        .upload(&Matrix::from_fn(512, 1024, |r, c| (r + c) as f32))
        .unwrap();
    // More launches than fit one submission, with a read-back in the middle: the clock must
    // cover all of them (CubeCL 0.10's wgpu profiler stops at the first compute pass and
    // reports a small fraction of this), so device time is most of the host's time around it.
    let launches = 80;
    let start = std::time::Instant::now();
    let (secs, source) = b
        .timed(&mut || {
            for i in 0..launches {
                let s = b.score(&w, Score::Magnitude)?;
                if i == launches / 2 {
                    b.download(&s)?;
                }
            }
            Ok(())
        })
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    // lavapipe and GPUs with timestamp queries time on the device.
    assert_eq!(source, TimeSource::DeviceTimestamps);
    println!("device {secs} s, host {wall} s");
    assert!(
        secs > 0.3 * wall && secs <= wall,
        "device {secs} s, host {wall} s"
    );
    let info = b.info();
    assert!(info
        .limits
        .iter()
        .any(|(k, v)| k == "max_binding_bytes" && *v > 0));
    println!("{info:?}");
}

/// Shapes past one of each kernel's internal blocks: rows longer than one staged chunk of X
/// (4096 columns at one token, 512 at eight) and than one round of 256 units per cube, more
/// rows than one thread of the offsets scan takes (rows > 256), token counts that leave a
/// partial block.
#[test]
fn long_rows_and_many_rows_match_the_reference() {
    use CaseFormat::{Bitmap, Dense, TwoFour};
    use MaskSource::{Holes, None, Wanda};
    let b = backend().with_poisoned_outputs(true);
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
    ];
    run(&b, &cases);
}

/// f32 -> f16 on the device equals `half`'s `f16::from_f32` bit for bit, and f16 -> f32 equals
/// `to_f32` on all 65536 patterns (NaN as NaN).
#[test]
fn device_f16_conversions_are_the_half_crates() {
    let b = backend();
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        -65504.0,
        65519.99,
        -65519.99,
        65520.0,
        65536.0,
        1e6,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0x7FC1_2345),
        f32::from_bits(0xFFA0_0000),
        f32::MIN_POSITIVE,
        1e-40,
        // The smallest normal f16, the smallest subnormal, half of it (a tie to 0) and just
        // above (to the smallest), 1.5 of it (a tie to 2), the largest subnormal + half an ulp
        // (a tie that carries into the exponent).
        6.103_515_6e-5,
        5.960_464_5e-8,
        2.980_232_2e-8,
        f32::from_bits(2.980_232_2e-8f32.to_bits() + 1),
        8.940_697e-8,
        6.097_555e-5 + 2.980_232_2e-8,
        // Ties to even in the normal range, down and up, and one carrying into the exponent.
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        2.0 - 1.0 / 4096.0,
        2047.5,
        2049.0,
    ];
    // Every midpoint between neighbouring f16 (a tie) and the f32 on either side of it.
    for h in 0..0x7BFFu16 {
        let lo = f16::from_bits(h).to_f64();
        let hi = f16::from_bits(h + 1).to_f64();
        let mid = ((lo + hi) / 2.0) as f32;
        for m in [
            mid,
            f32::from_bits(mid.to_bits() + 1),
            f32::from_bits(mid.to_bits() - 1),
        ] {
            v.push(m);
            v.push(-m);
        }
    }
    let mut rng = Rng::new(7);
    for _ in 0..100_000 {
        v.push(f32::from_bits(rng.next_u64() as u32));
    }
    let got = b.f16_from_f32_on_device(&v).unwrap();
    let bad: Vec<String> = v
        .iter()
        .zip(&got)
        .filter(|(x, g)| f16::from_f32(**x).to_bits() != **g)
        .take(10)
        .map(|(x, g)| {
            format!(
                "{x:e} ({:#010x}): device {g:#06x}, half {:#06x}",
                x.to_bits(),
                f16::from_f32(*x).to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "f32 -> f16 differs:\n{}", bad.join("\n"));

    let all: Vec<u16> = (0..=u16::MAX).collect();
    let got = b.f16_to_f32_on_device(&all).unwrap();
    for (h, g) in all.iter().zip(&got) {
        let want = f16::from_bits(*h).to_f32();
        assert!(
            (want.is_nan() && g.is_nan()) || want.to_bits() == g.to_bits(),
            "f16 {h:#06x}: device {g:e} ({:#010x}), half {want:e}",
            g.to_bits()
        );
    }
}

/// Weights that are not f16 values (every exponent from f16 subnormals to the largest finite
/// f16, exact ties, kept zeros) compress to the reference's words in every format, and
/// decompress to the masked f16 weight bit for bit.
#[test]
fn compression_rounds_and_packs_like_the_reference() {
    let b = backend().with_poisoned_outputs(true);
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
        let same = d
            .data
            .iter()
            .zip(&truth.data)
            .all(|(a, t)| a.to_bits() == t.to_bits());
        assert!(same, "{} decompression", format.name());
        // The uploaded reference decodes the same way.
        let up = b.upload_packed(&want).unwrap();
        assert_eq!(b.download(&b.decompress(&up).unwrap()).unwrap(), d);
        let cpu_p = cpu.compress(&cpu.upload(&w).unwrap(), m, format).unwrap();
        assert_eq!(cpu_p, want);
    }
}

/// Bad compressions and products are refused with the reference's errors: the first group
/// keeping more than 2 of 4 (after any value error), columns not a multiple of 4, a mask of
/// another shape, a kept value outside f16, N = 0 tokens, X of other columns, malformed
/// uploads.
#[test]
fn bad_compressions_and_products_get_the_reference_errors() {
    let b = backend();
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
    for format in [
        WeightFormat::Dense,
        WeightFormat::TwoFour,
        WeightFormat::Bitmap,
    ] {
        let e = both(&w, &Mask::empty(rows, cols + 4), format);
        assert!(e.contains("mask is 5x44 but the weight is 5x40"), "{e}");
    }

    // Uploads whose buffers do not fit the layout, and a bitmap whose offsets disagree
    // with its bits.
    let mut short = formats::compress(&w, &Mask::empty(rows, cols), WeightFormat::Dense).unwrap();
    short.values.pop();
    assert!(matches!(
        b.upload_packed(&short),
        Err(KernelError::Shape(_))
    ));
    let bitmap = formats::compress(&w, &m, WeightFormat::Bitmap).unwrap();
    let mut wrong = bitmap.clone();
    wrong.offsets[2] += 1;
    assert!(matches!(
        b.upload_packed(&wrong),
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

/// The re-fit ops through the slab path: W, H, Ŵ, the norm system and the moments split in
/// 64-row slabs, and at rank 130 the LoRA factors too (B in 128-row slabs, unlike W's), with
/// outputs poisoned. (The small re-fit cases run in the two tests above.)
#[test]
fn refit_ops_on_split_tensors_match_the_reference() {
    use prunebench_kernels::ops::LoraForm::{Mask as MaskForm, Scale};
    let b = backend()
        .with_binding_limit(64 * 300 * 4)
        .with_poisoned_outputs(true);
    assert!(b.slabs(150, 130).unwrap().count() == 2);
    let mut cases = vec![
        OpCase::new(Op::RefitBase, 150, 200).tokens(300, 1),
        OpCase::new(Op::AdamW, 150, 300),
        OpCase::new(Op::RowScale, 150, 200).tokens(300, 1),
        OpCase::new(Op::NormSystem, 150, 200).tokens(300, 1),
        OpCase::new(Op::SpdSolve, 1, 200).tokens(300, 1),
    ];
    for (form, rank) in [(MaskForm, 16), (Scale, 16), (MaskForm, 130), (Scale, 130)] {
        cases.push(OpCase::new(Op::LoraGrad(form, rank), 150, 200).tokens(300, 1));
        cases.push(OpCase::new(Op::LoraMerge(form, rank), 150, 200));
    }
    run(&b, &cases);
}

/// The re-fit ops refuse mismatched shapes with the reference's errors.
#[test]
fn refit_shape_errors_match_the_reference() {
    use prunebench_kernels::cpu::CpuBackend;
    use prunebench_kernels::ops::{AdamStep, LoraForm, LoraInputs};

    fn errors<B: Backend>(b: &B) -> Vec<String> {
        let up = |r, c| {
            b.upload(&Matrix::from_fn(r, c, |i, j| (i + j) as f32))
                .unwrap()
        };
        let text = |e: Option<KernelError>| e.map_or("accepted".into(), |e| e.to_string());
        let (w, short, h, h7, lb, la, la3) = (
            up(5, 8),
            up(4, 8),
            up(8, 8),
            up(7, 7),
            up(5, 2),
            up(2, 8),
            up(3, 8),
        );
        let mask = b.upload_mask(&Mask::empty(5, 8)).unwrap();
        let mask4 = b.upload_mask(&Mask::empty(4, 8)).unwrap();
        let lora = |delta: &B::Tensor, a: &B::Tensor| {
            b.lora_grad(LoraInputs {
                form: LoraForm::Mask,
                wp: &w,
                mask: &mask,
                delta,
                delta_h: &w,
                h: &h,
                b: &lb,
                a,
                s: 2.0,
                norm: 1.0,
            })
            .err()
        };
        let (mut p, mut m, mut v) = (up(5, 8), up(5, 8), up(5, 8));
        let mut w_hat = up(5, 8);
        vec![
            text(b.refit_base(Some(&short), &w, &h).err()),
            text(b.refit_base(None, &w, &h7).err()),
            text(lora(&short, &la)),
            text(lora(&w, &la3)),
            text(
                b.adamw_step(&mut p, &short, &mut m, &mut v, AdamStep::new(1e-3, 1))
                    .err(),
            ),
            text(
                b.lora_merge(&w, &mask4, &lb, &la, LoraForm::Scale, 1.0)
                    .err(),
            ),
            text(
                b.lora_merge(&w, &mask, &lb, &la3, LoraForm::Mask, 2.0)
                    .err(),
            ),
            text(b.row_scale(&mut w_hat, &short, &h).err()),
            text(b.norm_system(&[(&w, &w), (&w, &short)], &h).err()),
            text(b.norm_system(&[(&w, &w)], &h7).err()),
            text(b.spd_solve(&h, &up(1, 7), 0.01).err()),
            text(b.spd_solve(&lb, &up(1, 5), 0.01).err()),
        ]
    }
    let got = errors(&backend());
    assert!(got.iter().all(|e| e != "accepted"), "{got:?}");
    assert_eq!(got, errors(&CpuBackend::new()));
}
