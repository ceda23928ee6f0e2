//! The structured-pruning ops of ALGORITHMS.md §11 on the CubeCL backend against the f64
//! reference: odd shapes (one row, columns that are no multiple of a cube), heavy-tailed data,
//! an inverse Hessian from a real Hessian, KV-group-like groups, elementwise groups, removed
//! sets that are neither contiguous nor inside one group, tensors split into slabs, outputs
//! poisoned with NaN, and the same refusals with the same text.
#![cfg(feature = "cubecl")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};
use prunebench_kernels::ops::{tolerance as tol, GBLM_GRAD_SCALE, PERCDAMP};
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive};
use prunebench_kernels::{Backend, KernelError, Matrix, SegmentAxis, TaylorInputs, TaylorKind};

mod structured_common;
use structured_common::{max_rel, nmse, up};

fn backend() -> CubeWgpuBackend {
    cube_wgpu(None)
        .expect(
            "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
        )
        .with_poisoned_outputs(true)
}

/// Bindings capped at 64 rows of 300 columns: W, Hinv, Hinv[S,:] and Y of the split cases
/// each span several slabs.
fn split_backend() -> CubeWgpuBackend {
    cube_wgpu(None)
        .expect("no Vulkan adapter for CubeCL")
        .with_binding_limit(64 * 300 * 4)
        .with_poisoned_outputs(true)
}

fn both() -> [CubeWgpuBackend; 2] {
    let split = split_backend();
    // W, Hinv and the k x k blocks of the wider cases really are split.
    for (rows, cols) in [(150, 300), (300, 300), (130, 200), (200, 200), (150, 150)] {
        assert!(
            split.slabs(rows, cols).unwrap().count() >= 2,
            "{rows}x{cols}"
        );
    }
    [backend(), split]
}

fn run_cpu<T>(f: impl FnOnce(&CpuBackend) -> T) -> T {
    f(&CpuBackend::new())
}

/// The damped inverse of a Hessian of heavy-tailed inputs, as the reference forms it.
fn hinv(cols: usize, seed: u64) -> Matrix {
    let cpu = CpuBackend::new();
    let x = heavy_tailed(2 * cols + 16, cols, seed);
    let mut h = cpu.zeros(cols, cols).unwrap();
    cpu.hessian_update(&mut h, 0, &cpu.upload(&x).unwrap(), 1)
        .unwrap();
    let e = cpu.hinv_explicit(&h, PERCDAMP).unwrap();
    cpu.download(&e.hinv).unwrap()
}

#[test]
fn grad_sum_matches_the_reference() {
    for b in both() {
        // (rows, cols, tokens): one row, odd widths, and tokens split into several slabs.
        for (rows, cols, tokens) in [(1, 37, 5), (130, 37, 9), (37, 300, 150), (150, 130, 140)] {
            let acc0 = heavy_tailed(rows, cols, 1);
            let mut want = up(&CpuBackend::new(), &acc0);
            let mut got = up(&b, &acc0);
            for sample in 0..2 {
                let dy = heavy_tailed(tokens, rows, 10 + sample);
                let x = heavy_tailed(tokens, cols, 20 + sample);
                run_cpu(|c| c.grad_sum_fused(&mut want, &up(c, &dy), &up(c, &x))).unwrap();
                b.grad_sum_fused(&mut got, &up(&b, &dy), &up(&b, &x))
                    .unwrap();
            }
            let want = CpuBackend::new().download(&want).unwrap();
            let got = b.download(&got).unwrap();
            let e = nmse(&want, &got);
            assert!(
                e <= tol::REDUCTION,
                "{rows}x{cols}, {tokens} tokens: nmse {e}"
            );
        }
    }
}

#[test]
fn hinv_explicit_matches_the_reference() {
    for b in both() {
        for cols in [1, 37, 130, 200, 300] {
            let mut x = heavy_tailed(2 * cols + 16, cols, cols as u64);
            // A dead input channel: its Hessian diagonal is 0.
            let dead = cols / 2;
            for t in 0..x.rows {
                x.data[t * cols + dead] = 0.0;
            }
            let cpu = CpuBackend::new();
            let mut h = cpu.zeros(cols, cols).unwrap();
            cpu.hessian_update(&mut h, 0, &up(&cpu, &x), 1).unwrap();
            let hm = cpu.download(&h).unwrap();
            let want = cpu.hinv_explicit(&h, PERCDAMP).unwrap();
            let got = b.hinv_explicit(&up(&b, &hm), PERCDAMP).unwrap();
            assert_eq!(got.dead, want.dead, "{cols} columns");
            assert!(
                ((got.damp - want.damp) / want.damp).abs() < 1e-5,
                "{cols} columns: damp {} vs {}",
                got.damp,
                want.damp
            );
            let (w, g) = (
                cpu.download(&want.hinv).unwrap(),
                b.download(&got.hinv).unwrap(),
            );
            let e = nmse(&w, &g);
            assert!(e <= tol::HINV_EXPLICIT, "{cols} columns: nmse {e}");
            for i in 0..cols {
                for j in 0..i {
                    assert_eq!(g.get(i, j), g.get(j, i), "{cols} columns: not symmetric");
                }
            }
        }
    }
}

fn check_obs(b: &CubeWgpuBackend, rows: usize, cols: usize, width: usize, groups: &[usize]) {
    let w = heavy_tailed(rows, cols, 3);
    let hi = hinv(cols, 4);
    let cpu = CpuBackend::new();
    let want = cpu
        .download(
            &cpu.obs_saliency(&up(&cpu, &w), &up(&cpu, &hi), width, groups)
                .unwrap(),
        )
        .unwrap();
    let got = b
        .download(
            &b.obs_saliency(&up(b, &w), &up(b, &hi), width, groups)
                .unwrap(),
        )
        .unwrap();
    let e = max_rel(&want, &got);
    assert!(
        e <= tol::SALIENCY_REL,
        "{rows}x{cols}, width {width}, groups {groups:?}: relative error {e}"
    );
}

#[test]
fn obs_saliency_matches_the_reference() {
    for b in both() {
        for rows in [1, 150] {
            // Elementwise groups: every column, and a few in any order.
            for cols in [37, 130, 300] {
                let all: Vec<usize> = (0..cols).collect();
                check_obs(&b, rows, cols, 1, &all);
                check_obs(&b, rows, cols, 1, &[cols - 1, 0, cols / 2, 3]);
            }
            // Three KV-group-like groups of 24, all or some, in any order.
            check_obs(&b, rows, 72, 24, &[0, 1, 2]);
            check_obs(&b, rows, 72, 24, &[2, 0]);
            // Groups wider than one 64-column Cholesky block, and one the whole width.
            check_obs(&b, rows, 300, 100, &[0, 1, 2]);
            check_obs(&b, rows, 130, 130, &[0]);
            check_obs(&b, rows, 300, 150, &[1, 0]);
        }
    }
    assert!(backend()
        .obs_saliency(
            &up(&backend(), &heavy_tailed(3, 8, 1)),
            &up(&backend(), &hinv(8, 2)),
            4,
            &[]
        )
        .is_ok_and(|t| backend().shape(&t) == (1, 0)));
}

#[test]
fn taylor_saliency_matches_the_reference() {
    let samples = 7.0;
    let grad_scale = 1.0 / samples;
    let fisher_scale = 1.0 / (GBLM_GRAD_SCALE as f64 * GBLM_GRAD_SCALE as f64 * samples);
    for b in both() {
        // (rows, cols, axis, width)
        let shapes = [
            (1, 37, SegmentAxis::Rows, 1),
            (1, 37, SegmentAxis::Cols, 1),
            (150, 72, SegmentAxis::Cols, 24),
            (150, 72, SegmentAxis::Rows, 5),
            (130, 300, SegmentAxis::Cols, 100),
            (130, 300, SegmentAxis::Rows, 13),
            (150, 37, SegmentAxis::Rows, 150),
        ];
        for (rows, cols, axis, width) in shapes {
            let w = heavy_tailed(rows, cols, 5);
            let gs = heavy_tailed(rows, cols, 6);
            let gq = heavy_tailed_positive(rows, cols, 7);
            for kind in TaylorKind::ALL {
                let cpu = CpuBackend::new();
                let (cw, cgs, cgq) = (up(&cpu, &w), up(&cpu, &gs), up(&cpu, &gq));
                let (bw, bgs, bgq) = (up(&b, &w), up(&b, &gs), up(&b, &gq));
                // Only the statistics the kind reads.
                let want = cpu
                    .taylor_saliency(TaylorInputs {
                        w: &cw,
                        grad_sum: kind.needs_mean_grad().then_some(&cgs),
                        grad_sq: kind.needs_fisher().then_some(&cgq),
                        grad_scale,
                        fisher_scale,
                        kind,
                        axis,
                        width,
                    })
                    .unwrap();
                let got = b
                    .taylor_saliency(TaylorInputs {
                        w: &bw,
                        grad_sum: kind.needs_mean_grad().then_some(&bgs),
                        grad_sq: kind.needs_fisher().then_some(&bgq),
                        grad_scale,
                        fisher_scale,
                        kind,
                        axis,
                        width,
                    })
                    .unwrap();
                let (want, got) = (cpu.download(&want).unwrap(), b.download(&got).unwrap());
                let e = max_rel(&want, &got);
                assert!(
                    e <= tol::SALIENCY_REL,
                    "{} {rows}x{cols} {axis:?} width {width}: relative error {e}",
                    kind.name()
                );
            }
        }
    }
}

fn check_update(b: &CubeWgpuBackend, rows: usize, cols: usize, removed: &[usize]) {
    let w0 = heavy_tailed(rows, cols, 8);
    let h0 = hinv(cols, 9);
    let cpu = CpuBackend::new();
    let (mut cw, mut ch) = (up(&cpu, &w0), up(&cpu, &h0));
    let want_loss = cpu.structured_update(&mut cw, &mut ch, removed).unwrap();
    let (mut gw, mut gh) = (up(b, &w0), up(b, &h0));
    let got_loss = b.structured_update(&mut gw, &mut gh, removed).unwrap();
    let what = format!("{rows}x{cols}, {} removed", removed.len());
    let rel = ((got_loss - want_loss) / want_loss).abs();
    assert!(
        rel <= tol::SALIENCY_REL,
        "{what}: loss {got_loss} vs {want_loss}"
    );
    let (ww, gw) = (cpu.download(&cw).unwrap(), b.download(&gw).unwrap());
    let (wh, gh) = (cpu.download(&ch).unwrap(), b.download(&gh).unwrap());
    let e = nmse(&ww, &gw);
    assert!(e <= tol::STRUCTURED_UPDATE, "{what}: W nmse {e}");
    let e = nmse(&wh, &gh);
    assert!(e <= tol::STRUCTURED_UPDATE, "{what}: Hinv nmse {e}");
    for &c in removed {
        for r in 0..rows {
            assert_eq!(gw.get(r, c).to_bits(), 0, "{what}: W[{r},{c}]");
        }
        for i in 0..cols {
            assert_eq!(gh.get(i, c).to_bits(), 0, "{what}: Hinv[{i},{c}]");
            assert_eq!(gh.get(c, i).to_bits(), 0, "{what}: Hinv[{c},{i}]");
        }
    }
    // The loss of one contiguous group is its OBS saliency.
    if removed.windows(2).all(|p| p[1] == p[0] + 1) && removed[0].is_multiple_of(removed.len()) {
        let width = removed.len();
        if cols.is_multiple_of(width) {
            let s = b
                .obs_saliency(&up(b, &w0), &up(b, &h0), width, &[removed[0] / width])
                .unwrap();
            let s = b.download(&s).unwrap().data[0] as f64;
            assert!(
                ((s - got_loss) / got_loss).abs() <= tol::SALIENCY_REL,
                "{what}"
            );
        }
    }
}

#[test]
fn structured_update_matches_the_reference() {
    // Spanning the three groups of 24, not contiguous.
    let scattered = [1, 5, 6, 23, 24, 30, 47, 50, 70, 71];
    // More than one 64-column block, every third column of 300.
    let thirds: Vec<usize> = (0..300).step_by(3).collect();
    // 130 of 200 (Hinv[S,:] and Y in two slabs on the split backend).
    let most: Vec<usize> = (0..200).filter(|c| c % 3 != 1).take(130).collect();
    for b in both() {
        for rows in [1, 150] {
            check_update(&b, rows, 72, &scattered);
            check_update(&b, rows, 72, &[24 + 7]);
            check_update(&b, rows, 72, &(24..48).collect::<Vec<_>>());
            check_update(&b, rows, 37, &[0, 36]);
            check_update(&b, rows, 300, &thirds);
            check_update(&b, rows, 200, &most);
            check_update(&b, rows, 300, &(50..250).collect::<Vec<_>>());
        }
    }
}

#[test]
fn compaction_is_exact() {
    for b in both() {
        for (rows, cols) in [(1, 37), (150, 130), (130, 300)] {
            let w = heavy_tailed(rows, cols, 11);
            let keep_rows: Vec<usize> = (0..rows).filter(|r| r % 3 != 2).collect();
            let keep_cols: Vec<usize> = (0..cols).filter(|c| c % 4 != 1 && *c != 5).collect();
            let cpu = CpuBackend::new();
            for (r, c) in [
                (Some(&keep_rows[..]), Some(&keep_cols[..])),
                (None, Some(&keep_cols[..])),
                (Some(&keep_rows[..]), None),
                (None, None),
                (Some(&[rows - 1][..]), Some(&[0, cols - 1][..])),
            ] {
                let want = cpu
                    .download(&cpu.compact(&up(&cpu, &w), r, c).unwrap())
                    .unwrap();
                let got = b.download(&b.compact(&up(&b, &w), r, c).unwrap()).unwrap();
                assert_eq!(want.shape(), got.shape());
                let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&want), bits(&got), "{rows}x{cols}");
            }
        }
    }
}

/// Both backends refuse with the same text.
fn same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    want: Result<T, KernelError>,
    got: Result<U, KernelError>,
) {
    let want = want.expect_err(what).to_string();
    let got = got.expect_err(what).to_string();
    assert_eq!(got, want, "{what}");
}

#[test]
fn refusals_match_the_reference() {
    let b = backend();
    let cpu = CpuBackend::new();
    let w = heavy_tailed(4, 12, 1);
    let h = hinv(12, 2);
    let h9 = hinv(9, 3);
    let (cw, ch, ch9) = (up(&cpu, &w), up(&cpu, &h), up(&cpu, &h9));
    let (bw, bh, bh9) = (up(&b, &w), up(&b, &h), up(&b, &h9));

    // The gradient sum: dY and X disagree on tokens, or A's shape.
    let (dy, x, xbad) = (
        heavy_tailed(5, 4, 4),
        heavy_tailed(5, 12, 5),
        heavy_tailed(6, 12, 6),
    );
    same_error(
        "tokens",
        cpu.grad_sum_fused(&mut cw.clone(), &up(&cpu, &dy), &up(&cpu, &xbad)),
        b.grad_sum_fused(&mut bw.clone(), &up(&b, &dy), &up(&b, &xbad)),
    );
    same_error(
        "accumulator",
        cpu.grad_sum_fused(&mut ch.clone(), &up(&cpu, &dy), &up(&cpu, &x)),
        b.grad_sum_fused(&mut bh.clone(), &up(&b, &dy), &up(&b, &x)),
    );
    same_error(
        "hinv of a non-square",
        cpu.hinv_explicit(&cw, PERCDAMP),
        b.hinv_explicit(&bw, PERCDAMP),
    );

    // OBS saliency: Hinv of the wrong size, a width that does not divide, a group past the end.
    same_error(
        "obs hinv",
        cpu.obs_saliency(&cw, &ch9, 3, &[0]),
        b.obs_saliency(&bw, &bh9, 3, &[0]),
    );
    for (width, groups) in [(5, vec![0]), (0, vec![0]), (4, vec![3]), (1, vec![12])] {
        same_error(
            &format!("obs width {width} groups {groups:?}"),
            cpu.obs_saliency(&cw, &ch, width, &groups),
            b.obs_saliency(&bw, &bh, width, &groups),
        );
    }

    // Taylor: a missing or misshapen statistic, a width that does not divide.
    let t = |kind, grad_sum, grad_sq, axis, width| TaylorInputs {
        w: &cw,
        grad_sum,
        grad_sq,
        grad_scale: 1.0,
        fisher_scale: 1.0,
        kind,
        axis,
        width,
    };
    let tb = |kind, grad_sum, grad_sq, axis, width| TaylorInputs {
        w: &bw,
        grad_sum,
        grad_sq,
        grad_scale: 1.0,
        fisher_scale: 1.0,
        kind,
        axis,
        width,
    };
    use SegmentAxis::{Cols, Rows};
    use TaylorKind::{Taylor1, Taylor2, TaylorMix};
    same_error(
        "taylor1 without the gradient",
        cpu.taylor_saliency(t(Taylor1, None, Some(&cw), Rows, 1)),
        b.taylor_saliency(tb(Taylor1, None, Some(&bw), Rows, 1)),
    );
    same_error(
        "taylor2 without the Fisher",
        cpu.taylor_saliency(t(Taylor2, Some(&cw), None, Rows, 1)),
        b.taylor_saliency(tb(Taylor2, Some(&bw), None, Rows, 1)),
    );
    same_error(
        "taylor_mix with a misshapen statistic",
        cpu.taylor_saliency(t(TaylorMix, Some(&ch), Some(&cw), Cols, 1)),
        b.taylor_saliency(tb(TaylorMix, Some(&bh), Some(&bw), Cols, 1)),
    );
    same_error(
        "taylor width",
        cpu.taylor_saliency(t(Taylor1, Some(&cw), None, Cols, 5)),
        b.taylor_saliency(tb(Taylor1, Some(&bw), None, Cols, 5)),
    );
    same_error(
        "taylor rows width",
        cpu.taylor_saliency(t(Taylor2, None, Some(&cw), Rows, 3)),
        b.taylor_saliency(tb(Taylor2, None, Some(&bw), Rows, 3)),
    );

    // The update: unsorted, repeated, past the end, empty, Hinv of the wrong size.
    for removed in [vec![3, 1], vec![2, 2], vec![12], vec![]] {
        same_error(
            &format!("removed {removed:?}"),
            cpu.structured_update(&mut cw.clone(), &mut ch.clone(), &removed),
            b.structured_update(&mut bw.clone(), &mut bh.clone(), &removed),
        );
    }
    same_error(
        "update hinv",
        cpu.structured_update(&mut cw.clone(), &mut ch9.clone(), &[1]),
        b.structured_update(&mut bw.clone(), &mut bh9.clone(), &[1]),
    );

    // Compaction: unsorted, past the end, nothing kept.
    for (r, c) in [
        (Some(vec![1, 0]), None),
        (None, Some(vec![12])),
        (Some(vec![]), None),
        (None, Some(vec![])),
    ] {
        same_error(
            &format!("compact {r:?} {c:?}"),
            cpu.compact(&cw, r.as_deref(), c.as_deref()),
            b.compact(&bw, r.as_deref(), c.as_deref()),
        );
    }
}

/// An inverse Hessian whose block on S is not positive definite is refused as the reference
/// refuses it, and the update leaves W and Hinv as they were.
#[test]
fn indefinite_blocks_are_refused() {
    let b = backend();
    let cpu = CpuBackend::new();
    let (rows, cols) = (5, 72);
    let w = heavy_tailed(rows, cols, 12);
    let mut h = hinv(cols, 13);
    // Column 30 (group 1 of width 24): a negative diagonal.
    h.data[30 * cols + 30] = -h.data[30 * cols + 30];
    let npd = |e: KernelError| matches!(e, KernelError::NotPositiveDefinite { .. });
    for (width, groups) in [(1, vec![0, 30, 40]), (24, vec![0, 1, 2]), (24, vec![1])] {
        let want = cpu.obs_saliency(&up(&cpu, &w), &up(&cpu, &h), width, &groups);
        let got = b.obs_saliency(&up(&b, &w), &up(&b, &h), width, &groups);
        assert!(npd(want.unwrap_err()), "width {width}");
        assert!(npd(got.unwrap_err()), "width {width}");
    }
    // Groups that avoid the column are scored.
    assert!(b
        .obs_saliency(&up(&b, &w), &up(&b, &h), 24, &[0, 2])
        .is_ok());
    for removed in [vec![30], vec![2, 30, 64]] {
        let (mut cw, mut ch) = (up(&cpu, &w), up(&cpu, &h));
        assert!(npd(cpu
            .structured_update(&mut cw, &mut ch, &removed)
            .unwrap_err()));
        let (mut gw, mut gh) = (up(&b, &w), up(&b, &h));
        assert!(npd(b
            .structured_update(&mut gw, &mut gh, &removed)
            .unwrap_err()));
        assert_eq!(b.download(&gw).unwrap().data, w.data, "W changed");
        assert_eq!(b.download(&gh).unwrap().data, h.data, "Hinv changed");
    }
}
