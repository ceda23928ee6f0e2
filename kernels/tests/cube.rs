//! The CubeCL backend beyond the shared conformance cases: the slab path for tensors larger
//! than one binding (forced on small shapes, and once for real above 128 MiB), outputs
//! poisoned with NaN before the kernels run, device limits refused before any work, numerical
//! failures reported as errors, adapter choice and device timing.
#![cfg(feature = "cubecl")]

use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};
use prunebench_kernels::suite::{small_cases, verify_cases, ObsKind, Op, OpCase};
use prunebench_kernels::{
    Backend, GradNorm, KernelError, Mask, MaskGroup, MaskPattern, Matrix, Score, ScoreKind,
    TimeSource,
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
    v
}

/// Every op through the slab path: bindings capped at 64 rows of 300 columns, so that W, X,
/// H and U of these shapes are each split in two to four slabs, with outputs poisoned.
#[test]
fn split_tensors_match_the_reference() {
    let b = backend()
        .with_slab_limit(64 * 300 * 4)
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
    let b = backend().with_slab_limit(limit);
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
    let split = backend().with_slab_limit(64 * 300 * 4);
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

/// The re-fit ops through the slab path: W, H, Ŵ, the norm system and the moments split in
/// 64-row slabs, and at rank 130 the LoRA factors too (B in 128-row slabs, unlike W's), with
/// outputs poisoned. (The small re-fit cases run in the two tests above.)
#[test]
fn refit_ops_on_split_tensors_match_the_reference() {
    use prunebench_kernels::ops::LoraForm::{Mask as MaskForm, Scale};
    let b = backend()
        .with_slab_limit(64 * 300 * 4)
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
