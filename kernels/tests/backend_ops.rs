//! Each GPU backend's own guarantees beyond conformance, written once and instantiated per
//! backend by `backend_tests!`: the op table's cases with tensors split across bindings
//! (forced on small shapes, and once for real above 128 MiB), every output entry written
//! (outputs start as NaN), device limits refused before any work, numerical failures and bad
//! shapes as errors, the re-fit ops split and refused as the reference refuses, timing on the
//! device's clock, and adapters chosen by name. The compressed formats are in `sparse_ops.rs`;
//! what one backend alone has, in `wgpu_only.rs` and `cube_only.rs`.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::{run_cases, small_cases_named};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{AdamStep, LoraForm, LoraInputs};
use prunebench_kernels::plan::{depth_split, groups::DEFAULT_FILL};
use prunebench_kernels::suite::{
    small_cases, small_refit_cases, CaseFormat, MaskSource, ObsKind, Op, OpCase,
};
use prunebench_kernels::{
    Backend, GradNorm, HinvFactor, KernelError, Mask, MaskGroup, MaskPattern, Matrix, ObsSelection,
    Score, ScoreKind, Sparsity, WeightFormat,
};

/// Bindings capped at 64 rows of 300 columns: W, X, H and U of the split shapes are each
/// split in two to four bindings.
const SPLIT_BYTES: u64 = 64 * 300 * 4;

/// 8 KiB, the least wgpu takes: tensors come in windows of a few rows.
const WINDOW_BYTES: u64 = 8 << 10;

const ROW: fn(f64) -> MaskPattern = |p| MaskPattern::Unstructured {
    sparsity: p,
    group: MaskGroup::PerRow,
};

/// Every op's small cases but the factor, whose 64-row Cholesky blocks of a 200-column H need
/// 51 KB (and so the damped solve built on it), the LoRA ops, whose A (rank x cols) is bound
/// whole, and §11's saliency and update, whose |S| rows of Hinv are bound whole (their own
/// tests split W and Hinv at a cap those rows fit).
const ROW_SPLIT: &[&str] = &[
    "ACT_STAT",
    "HESSIAN",
    "GRAD_",
    "SCORE_",
    "MASK",
    "APPLY_MASK",
    "PRUNE_",
    "OBS_UNSTRUCTURED",
    "OBS_NM",
    "OBS_GIVEN",
    "RECON_",
    "COMPRESS",
    "MATMUL",
    "REFIT_BASE",
    "ADAMW",
    "ROW_SCALE",
    "NORM_SYSTEM",
];

const REFIT: &[&str] = &[
    "REFIT_BASE",
    "LORA_",
    "ADAMW",
    "ROW_SCALE",
    "NORM_SYSTEM",
    "SPD_SOLVE",
];

// ---- tensors split across bindings ----

fn small_cases_split_across_bindings<B: TestBackend>() {
    // 128 KiB: H, U (200 x 200 is 160 KB) and the OBS weights' factor come in several
    // bindings; the factor's last doubling step straddles two of them.
    let b = B::plain().with_limit(128 << 10);
    assert!(b.is_split(200, 200));
    run_cases(&b, &small_cases());
    b.assert_split_seen();
}

fn small_cases_in_windows<B: TestBackend>() {
    // Weights of 13 x 300 in slabs of 6 rows, the fused gradient's tokens in windows, H in
    // slabs of 15 rows, OBS sub-blocks of 9 columns (N:M: 8), products' tokens in windows
    // of 6.
    let b = B::plain().with_limit(WINDOW_BYTES);
    let cases = small_cases_named(ROW_SPLIT);
    assert!(!cases.is_empty());
    run_cases(&b, &cases);
    b.assert_split_seen();
}

/// Shapes with more rows than one 64-row binding, so that every op meets several.
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
    // Blocks that do not divide the columns and straddle bindings of U and mask words.
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

/// The small cases with blocks past `SPLIT_BYTES`: 64 rows of H of 300 columns (the
/// factor's blocks, so the damped solve's and the explicit inverse's too) and the removed
/// rows Hinv[S,:] of 80 columns of 300.
fn blocks_past_the_cap(c: &OpCase) -> bool {
    let factored = matches!(
        c.op,
        Op::HinvFactor | Op::SpdSolve | Op::HinvExplicit | Op::StructuredUpdate { .. }
    );
    factored && c.cols == 300
}

/// Every op through the split path at `SPLIT_BYTES`, with outputs poisoned: the shapes above
/// and the small cases.
fn split_tensors_match_the_reference<B: TestBackend>() {
    let b = B::split(SPLIT_BYTES);
    assert!(b.is_split(150, 296));
    assert!(b.is_split(200, 200));
    let mut cases = multi_slab_cases();
    cases.extend(
        small_cases()
            .into_iter()
            .filter(|c| !blocks_past_the_cap(c)),
    );
    run_cases(&b, &cases);
}

fn split_blocks_past_the_cap_match_the_reference<B: TestBackend>() {
    let b = B::split(SPLIT_BYTES);
    assert!(b.is_split(300, 300));
    let cases: Vec<OpCase> = small_cases()
        .into_iter()
        .filter(blocks_past_the_cap)
        .collect();
    assert_eq!(cases.len(), 4);
    run_cases(&b, &cases);
}

/// A weight above 128 MiB is split for real (on lavapipe that is its binding limit; other
/// devices are capped to it) and still gives the reference's result.
fn tensor_above_128_mib_is_split_and_correct<B: TestBackend>() {
    let limit = 128u64 << 20;
    let b = B::plain().with_limit(limit);
    let (rows, cols) = (8256, 4096);
    assert!(rows as u64 * cols as u64 * 4 > limit);
    assert!(b.is_split(rows, cols));
    run_cases(
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

// ---- outputs written, limits and failures as errors ----

/// Outputs start as NaN (all bits set, also in mask words); every small case must still
/// pass, and the new tensors must hold no NaN at all.
fn every_output_entry_is_written<B: TestBackend>() {
    let b = B::fresh();
    let mut cases = small_cases();
    // Rows long enough that the per-row selection cannot keep them in 32 KiB of shared
    // memory (lavapipe's) and recomputes keys from global memory, and one that just fits.
    for cols in [5632, 6000] {
        cases.push(OpCase::new(Op::Mask(ROW(0.3)), 12, cols));
        cases.push(OpCase::new(Op::Prune(ScoreKind::Gblm, ROW(0.5)), 12, cols));
    }
    run_cases(&b, &cases);
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
    for (pattern, pruned) in [(ROW(0.5), 9 * 35), (MaskPattern::NM { n: 2, m: 5 }, 9 * 28)] {
        // A poisoned, unwritten word would set padding bits and be rejected here.
        let m = b
            .download_mask(&b.select_mask(&w, pattern).unwrap())
            .unwrap();
        assert_eq!(m.count(), pruned);
    }
}

fn too_large_a_tensor_is_refused_before_any_work<B: TestBackend>() {
    let b = B::plain();
    // On Vulkan the device-local memory is known, so work is checked against it before it
    // starts; a single allocation past the driver's budget is refused regardless.
    let budget = b.memory_budget();
    println!("memory budget {budget:?}");
    if b.info().api == "Vulkan" {
        let memory = budget.expect("Vulkan reports its memory heaps");
        assert!(memory >= 1 << 20, "{memory} bytes of device-local memory");
        assert!(b
            .info()
            .limits
            .iter()
            .any(|(k, v)| k == "memory_bytes" && *v == memory));
    }
    match b.zeros(1 << 20, 1 << 20) {
        Err(KernelError::OutOfMemory {
            needed, available, ..
        }) => assert!(needed > available),
        other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
    }
    // Just past the budget: refused naming exactly what it needs.
    if let Some(budget) = budget {
        let (rows, cols) = (budget as usize / 4096 + 1, 1024);
        match b.zeros(rows, cols) {
            Err(KernelError::OutOfMemory {
                needed, available, ..
            }) => {
                assert_eq!(needed, (rows * cols * 4) as u64);
                assert!(available <= budget);
            }
            other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
        }
    }
    // Still usable afterwards.
    let t = b
        .upload(&Matrix::from_fn(3, 5, |r, c| (r * 5 + c) as f32))
        .unwrap();
    assert_eq!(b.download(&t).unwrap().get(2, 4), 14.0);
}

fn indefinite_or_non_finite_hessians_are_errors<B: TestBackend>() {
    let b = B::plain();
    let factor = |m: &Matrix, damp: f64| {
        let h = b.upload(m).unwrap();
        b.hinv_factor(&h, damp).map(|f| f.dead)
    };
    // Eigenvalues 3 and -1: 1% damping cannot fix that.
    match factor(&Matrix::new(2, 2, vec![1.0, 2.0, 2.0, 1.0]).unwrap(), 0.01) {
        Err(KernelError::NotPositiveDefinite { column }) => assert!(column < 2),
        other => panic!("expected NotPositiveDefinite, got {other:?}"),
    }
    // A larger one, failing in a later block: a rank-one matrix minus a bit of the identity.
    let n = 150;
    let m = Matrix::from_fn(n, n, |i, j| if i == j { 0.5 } else { 1.0 });
    assert!(matches!(
        factor(&m, 0.0),
        Err(KernelError::NotPositiveDefinite { .. })
    ));
    // A NaN, in the first block of 70 columns and in a 3 x 3: named where it is.
    let mut m70 = Matrix::from_fn(70, 70, |r, c| if r == c { 2.0 } else { 0.0 });
    m70.data[3 * 70 + 65] = f32::NAN;
    let mut m3 = Matrix::from_fn(3, 3, |i, j| if i == j { 2.0 } else { 0.0 });
    m3.data[5] = f32::NAN;
    for (m, at) in [(&m70, (3, 65)), (&m3, (1, 2))] {
        match factor(m, 0.01) {
            Err(KernelError::NonFinite { row, col, .. }) => assert_eq!((row, col), at),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(matches!(
            factor(m, -1.0),
            Err(KernelError::InvalidArgument(_))
        ));
    }
}

fn shape_errors_are_errors<B: TestBackend>() {
    let b = B::plain();
    let w = b.zeros(4, 8).unwrap();
    let g = b.zeros(4, 9).unwrap();
    let mut acc = b.zeros(4, 8).unwrap();
    assert!(matches!(
        b.grad_accumulate(&mut acc, &g, GradNorm::L2),
        Err(KernelError::Shape(_))
    ));
    let bad = MaskPattern::NM { n: 2, m: 3 };
    assert!(b.select_mask(&w, bad).map(|_| ()).is_err());
}

// ---- the re-fit ops ----

fn every_refit_case_runs_and_matches_the_reference<B: TestBackend>() {
    let cases = small_cases_named(REFIT);
    assert_eq!(cases.len(), small_refit_cases().len());
    run_cases(&B::plain(), &cases);
}

/// The LoRA ops at an 8 KiB binding limit, on shapes whose A (rank x cols, bound whole by
/// wgpu) fits one binding: W-shaped tensors in slabs of about 10 rows, H in windows of rows
/// (the K range of D·H), so the gradient's epilogue runs on the last window only.
fn lora_ops_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    let mut cases = Vec::new();
    for form in [LoraForm::Mask, LoraForm::Scale] {
        for (rank, rows, cols) in [(4, 40, 200), (17, 37, 100)] {
            cases.push(OpCase::new(Op::LoraGrad(form, rank), rows, cols).tokens(300, 1));
            cases.push(OpCase::new(Op::LoraMerge(form, rank), rows, cols));
        }
    }
    run_cases(&b, &cases);
    b.assert_split_seen();
}

/// LoRA's gradient products ∂B = Ḡ·Aᵀ (rows x rank) and ∂A = Bᵀ·Ḡ (rank x cols) are narrow
/// and deep, so they run as depth pieces summed by a second pass (`plan::depth_split`); the
/// plan is asserted so both stay split: three pieces of 344 of Ḡ's columns, two of 260 rows.
fn lora_grad_over_depth_pieces<B: TestBackend>() {
    let (rank, rows, cols) = (5, 520, 1032);
    assert_eq!(depth_split(rows, rank, cols, DEFAULT_FILL), 3);
    assert_eq!(depth_split(rank, cols, rows, DEFAULT_FILL), 2);
    let cases: Vec<OpCase> = [LoraForm::Mask, LoraForm::Scale]
        .into_iter()
        .map(|form| OpCase::new(Op::LoraGrad(form, rank), rows, cols).tokens(64, 1))
        .collect();
    run_cases(&B::plain(), &cases);
}

/// The re-fit cases for `SPLIT_BYTES`, where W, H, Ŵ, the norm system and the moments come
/// in 64-row bindings; the LoRA ops at each of `ranks`.
fn refit_cases_split(ranks: &[usize]) -> Vec<OpCase> {
    use LoraForm::{Mask as MaskForm, Scale};
    let mut cases = vec![
        OpCase::new(Op::RefitBase, 150, 200).tokens(300, 1),
        OpCase::new(Op::AdamW, 150, 300),
        OpCase::new(Op::RowScale, 150, 200).tokens(300, 1),
        OpCase::new(Op::NormSystem, 150, 200).tokens(300, 1),
        OpCase::new(Op::SpdSolve, 1, 200).tokens(300, 1),
    ];
    for &rank in ranks {
        for form in [MaskForm, Scale] {
            cases.push(OpCase::new(Op::LoraGrad(form, rank), 150, 200).tokens(300, 1));
            cases.push(OpCase::new(Op::LoraMerge(form, rank), 150, 200));
        }
    }
    cases
}

fn refit_ops_on_split_tensors_match_the_reference<B: TestBackend>() {
    let b = B::split(SPLIT_BYTES);
    assert!(b.is_split(150, 200));
    run_cases(&b, &refit_cases_split(&[16]));
}

/// At rank 130 the LoRA factors are split too (B 150 x 130 in two bindings; A 130 x 200).
fn lora_ops_of_rank_130_on_split_tensors_match_the_reference<B: TestBackend>() {
    let b = B::split(SPLIT_BYTES);
    assert!(b.is_split(150, 130) && b.is_split(130, 200));
    let cases: Vec<OpCase> = refit_cases_split(&[130])
        .into_iter()
        .filter(|c| matches!(c.op, Op::LoraGrad(..) | Op::LoraMerge(..)))
        .collect();
    run_cases(&b, &cases);
}

/// Every re-fit op given one wrong shape, as the error message it returns.
fn refit_shape_errors<B: Backend>(b: &B) -> Vec<String> {
    let t = |r: usize, c: usize| {
        b.upload(&Matrix::from_fn(r, c, |i, j| (i + 2 * j) as f32 / 10.0))
            .unwrap()
    };
    let mask = b.upload_mask(&Mask::empty(4, 8)).unwrap();
    let (w, h, lb, la) = (t(4, 8), t(8, 8), t(4, 2), t(2, 8));
    macro_rules! lora {
        ($a:expr) => {
            LoraInputs {
                form: LoraForm::Mask,
                wp: &w,
                mask: &mask,
                delta: &w,
                delta_h: &w,
                h: &h,
                b: &lb,
                a: $a,
                s: 2.0,
                norm: 1.0,
            }
        };
    }
    let (mut p, mut m, mut v) = (t(4, 8), t(4, 8), t(4, 8));
    let results = [
        b.refit_base(Some(&t(4, 7)), &w, &h).map(drop),
        b.refit_base(None, &w, &t(7, 8)).map(drop),
        b.lora_grad(lora!(&t(3, 8))).map(drop),
        b.lora_grad(lora!(&t(2, 7))).map(drop),
        b.adamw_step(&mut p, &t(4, 7), &mut m, &mut v, AdamStep::new(1e-3, 1)),
        b.lora_merge(&w, &mask, &t(3, 2), &la, LoraForm::Scale, 1.0)
            .map(drop),
        b.row_scale(&mut p, &t(4, 7), &h).map(drop),
        b.norm_system(&[(&w, &t(4, 7))], &h).map(drop),
        b.norm_system(&[(&w, &w)], &t(8, 7)).map(drop),
        b.spd_solve(&h, &t(1, 7), 0.01).map(drop),
    ];
    results
        .into_iter()
        .map(|r| match r {
            Err(e @ KernelError::Shape(_)) => e.to_string(),
            Err(e) => panic!("expected a shape error, got {e}"),
            Ok(()) => panic!("expected a shape error, got Ok"),
        })
        .collect()
}

/// More wrong shapes (W of 5 rows, masks of another shape, a solve of another size), as the
/// error message or "accepted".
fn refit_refusals<B: Backend>(b: &B) -> Vec<String> {
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

fn refit_shape_errors_are_the_references<B: TestBackend>() {
    let (b, cpu) = (B::plain(), CpuBackend::new());
    assert_eq!(refit_shape_errors(&b), refit_shape_errors(&cpu));
    let got = refit_refusals(&b);
    assert!(got.iter().all(|e| e != "accepted"), "{got:?}");
    assert_eq!(got, refit_refusals(&cpu));
}

/// The damped solve as the reference solves it where the Hessian factor would not: a zero
/// column stays zero (damped by λ, not replaced by 1 as a dead column), and a zero system
/// gives zeros.
fn damped_solve_keeps_zero_columns_and_solves_a_zero_system_to_zeros<B: TestBackend>() {
    let b = B::plain();
    let cpu = CpuBackend::new();
    let n = 70;
    let zero = |i: usize| i == 5 || i == 66;
    let m = Matrix::from_fn(n, n, |i, j| {
        if zero(i) || zero(j) {
            0.0
        } else if i == j {
            2.0 + (i % 7) as f32
        } else {
            0.1 / (1.0 + (i as f32 - j as f32).abs()).powi(2)
        }
    });
    let rhs = Matrix::from_fn(1, n, |_, j| (j as f32 - 30.0) / 10.0);
    let solve = |m: &Matrix| {
        let got = b
            .download(
                &b.spd_solve(&b.upload(m).unwrap(), &b.upload(&rhs).unwrap(), 0.01)
                    .unwrap(),
            )
            .unwrap();
        let want = cpu
            .download(
                &cpu.spd_solve(&cpu.upload(m).unwrap(), &cpu.upload(&rhs).unwrap(), 0.01)
                    .unwrap(),
            )
            .unwrap();
        (got, want)
    };
    let (got, want) = solve(&m);
    for j in 0..n {
        let (g, w) = (got.get(0, j) as f64, want.get(0, j) as f64);
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1e-3),
            "x[{j}]: {g} vs {w}"
        );
    }
    // λ = 1% of the mean diagonal: a zero column solves to rhs_j / λ.
    let lambda = 0.01 * (0..n).map(|i| m.get(i, i) as f64).sum::<f64>() / n as f64;
    assert!((got.get(0, 5) as f64 - rhs.get(0, 5) as f64 / lambda).abs() < 1e-3);
    let (got, want) = solve(&Matrix::from_fn(n, n, |_, _| 0.0));
    assert!(got.data.iter().all(|&x| x == 0.0) && got == want);
}

// ---- SparseGPT's block selection ----

/// The OBS block selection alone, against the reference bit for bit: with U diagonal (d in
/// {1/2, 1, 2}) no update reaches another column, so the mask is each block's k lowest w²/d²,
/// ties to the lower linear index within the block. W takes five levels on a grid of 1/64, so
/// the keys are exact in f32 and most of them tie: the threshold's bin holds a fifth of the
/// block. Blocks of one in-block dispatch (128), of no whole number of mask words (48), of
/// two of WGSL's sub-blocks (256), and one row; and W split across bindings at a cap that the
/// selection buffer still fits (the windows' candidates and ties in one list).
fn obs_block_selection_breaks_ties_as_the_reference<B: TestBackend>() {
    let plain = B::plain();
    let capped = B::plain().with_limit(1280 << 10);
    assert!(capped.is_split(600, 800));
    let cpu = CpuBackend::new();
    for (rows, cols, block, p, b) in [
        (1, 200, 128, 0.5, &plain),
        (37, 300, 48, 0.3, &plain),
        (300, 300, 256, 0.55, &plain),
        (150, 200, 128, 0.5, &plain),
        (600, 800, 48, 0.5, &capped),
    ] {
        let w = Matrix::from_fn(rows, cols, |r, c| {
            let h = (r * 7919 + c * 104_729) % 97;
            let level = [1.0, 2.0, 3.0, 5.0, 8.0][h % 5] / 64.0;
            if h % 2 == 0 {
                level
            } else {
                -level
            }
        });
        let u = Matrix::from_fn(cols, cols, |i, j| {
            if i == j {
                [0.5, 1.0, 2.0][i % 3]
            } else {
                0.0
            }
        });
        let (got_mask, got_w, got_loss) = pruned_by(b, &w, &u, p, block);
        let (want_mask, want_w, want_loss) = pruned_by(&cpu, &w, &u, p, block);
        let shape = format!("{rows}x{cols}, block {block}, p = {p}");
        assert!(got_mask == want_mask, "{shape}: the masks differ");
        assert!(got_w == want_w, "{shape}: the pruned weights differ");
        assert!(
            (got_loss - want_loss).abs() <= 1e-5 * want_loss,
            "{shape}: loss {got_loss} vs {want_loss}"
        );
    }
}

/// SparseGPT's unstructured OBS prune of `w` with the factor `u` on backend `b`: the mask, the
/// pruned weights and the loss.
fn pruned_by<B: Backend>(
    b: &B,
    w: &Matrix,
    u: &Matrix,
    p: f64,
    block: usize,
) -> (Mask, Matrix, f64) {
    let mut wt = b.upload(w).unwrap();
    let factor = HinvFactor {
        u: b.upload(u).unwrap(),
        dead: vec![],
        damp: 0.0,
    };
    let out = b
        .obs_prune(&mut wt, &factor, ObsSelection::Unstructured(p), block)
        .unwrap();
    (
        b.download_mask(&out.mask).unwrap(),
        b.download(&wt).unwrap(),
        out.loss,
    )
}

// ---- timing and adapters ----

fn timing_reads_the_device_clock<B: TestBackend>() {
    let b = B::plain();
    // One op: timed on the adapter's timestamps where it has them.
    let x = b
        .upload(&Matrix::from_fn(256, 128, |r, c| {
            ((r * 7 + c) % 13) as f32 - 6.0
        }))
        .unwrap();
    let mut h = b.zeros(128, 128).unwrap();
    let (secs, source) = b.timed(&mut || b.hessian_update(&mut h, 0, &x, 1)).unwrap();
    assert!(secs > 0.0 && secs < 60.0, "{secs} s");
    assert_eq!(source, b.time_source());

    // More launches than fit one submission, with a read-back in the middle: the clock must
    // cover all of them (CubeCL 0.10's wgpu profiler stops at the first compute pass and
    // reports a small fraction of this), so device time is most of the host's time around it.
    let w = b
        .upload(&Matrix::from_fn(512, 1024, |r, c| (r + c) as f32))
        .unwrap();
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
    assert_eq!(source, b.time_source());
    println!("device {secs} s, host {wall} s");
    assert!(
        secs > 0.3 * wall && secs <= wall,
        "device {secs} s, host {wall} s"
    );
    let info = b.info();
    assert!(info
        .limits
        .iter()
        .any(|(k, v)| k == B::BINDING_LIMIT && *v > 0));
    println!("{info:?}");
}

fn adapters_are_chosen_by_name<B: TestBackend>() {
    let b = B::plain();
    assert_eq!(b.info().backend, B::NAME);
    assert_ne!(b.info().api, "Gl");
    let name = b.info().device.clone();
    // The whole name or its start, in any case.
    for part in [
        name.to_uppercase(),
        name[..name.len().min(6)].to_uppercase(),
    ] {
        let again = B::open(Some(&part)).unwrap();
        assert_eq!(again.info().device, name, "{part}");
        assert_eq!(again.info().backend, B::NAME);
    }
    match B::open(Some("no adapter is called this")) {
        Err(KernelError::Device(msg)) => {
            assert!(
                msg.contains("adapters seen") && msg.contains(&name),
                "{msg}"
            )
        }
        Err(e) => panic!("expected a device error, got {e}"),
        Ok(other) => panic!("expected an error, got {:?}", other.info()),
    }
}

/// The tests of every body for backend `$B`, with the attributes in `windows` on those whose
/// tensors come in 8 KiB windows, and those in `blocks_past_the_cap` on those whose blocks
/// (64 rows of H, Hinv[S,:], LoRA's A) are past `SPLIT_BYTES`.
macro_rules! backend_tests {
    ($B:ty, windows: $windows:tt, blocks_past_the_cap: $blocks:tt) => {
        instantiate!(
            $B,
            [],
            small_cases_split_across_bindings,
            split_tensors_match_the_reference,
            tensor_above_128_mib_is_split_and_correct,
            every_output_entry_is_written,
            too_large_a_tensor_is_refused_before_any_work,
            indefinite_or_non_finite_hessians_are_errors,
            shape_errors_are_errors,
            every_refit_case_runs_and_matches_the_reference,
            refit_ops_on_split_tensors_match_the_reference,
            lora_grad_over_depth_pieces,
            refit_shape_errors_are_the_references,
            damped_solve_keeps_zero_columns_and_solves_a_zero_system_to_zeros,
            obs_block_selection_breaks_ties_as_the_reference,
            timing_reads_the_device_clock,
            adapters_are_chosen_by_name,
        );
        instantiate!($B, $windows, small_cases_in_windows, lora_ops_in_windows);
        instantiate!(
            $B,
            $blocks,
            split_blocks_past_the_cap_match_the_reference,
            lora_ops_of_rank_130_on_split_tensors_match_the_reference,
        );
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    backend_tests!(
        prunebench_kernels::wgpu::WgpuBackend,
        windows: [],
        blocks_past_the_cap: [
            // FINDING, kept marked: wgpu binds the factor's 64-row blocks of H (with a few
            // bytes of room for their alignment), the removed rows Hinv[S,:] and LoRA's A
            // (rank x cols) whole, so at 64 rows of 300 columns it refuses these cases with
            // `Unsupported` where CubeCL splits them.
            #[should_panic(expected = "Unsupported")]
        ]
    );
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    backend_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        windows: [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ],
        blocks_past_the_cap: []
    );
}
