//! The structured-pruning ops' edits (ALGORITHMS.md §11) on each GPU backend against the f64
//! reference, written once and instantiated per backend by `update_tests!`: the structured
//! OBS update over removed sets that are neither contiguous nor inside one group, inverse
//! Hessians that are not positive definite, compaction, and every op's refusals with the
//! reference's text; tensors split across bindings, outputs poisoned with NaN, and once
//! (ignored by default) LLaMA-sized shapes against closed forms.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::structured::{saliency, split, wide_split, Seeds, WINDOW_BYTES};
use common::{bits, down, nmse, up};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{tolerance, SegmentAxis, TaylorInputs, TaylorKind, PERCDAMP};
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive};
use prunebench_kernels::{Backend, KernelError, Matrix};

// ---- the structured OBS update ----

struct Updated {
    w: Matrix,
    hinv: Matrix,
    loss: f64,
}

fn update<B: Backend>(b: &B, w: &Matrix, hinv: &Matrix, removed: &[usize]) -> Updated {
    let (mut wt, mut ht) = (up(b, w), up(b, hinv));
    let loss = b.structured_update(&mut wt, &mut ht, removed).unwrap();
    Updated {
        w: down(b, &wt),
        hinv: down(b, &ht),
        loss,
    }
}

/// (rows, cols, removed columns)
type UpdateCase = (usize, usize, Vec<usize>);

fn check_update<B: Backend>(b: &B, seeds: Seeds, cases: &[UpdateCase]) {
    let cpu = CpuBackend::new();
    for (rows, cols, removed) in cases {
        let (rows, cols) = (*rows, *cols);
        let w = seeds.w(rows, cols);
        let hinv = seeds.hinv(cols);
        let want = update(&cpu, &w, &hinv, removed);
        let got = update(b, &w, &hinv, removed);
        let what = format!("update {rows}x{cols} removing {removed:?}");
        let e = nmse(&want.w, &got.w);
        assert!(e <= tolerance::STRUCTURED_UPDATE, "{what}: W nmse {e:e}");
        let e = nmse(&want.hinv, &got.hinv);
        assert!(e <= tolerance::STRUCTURED_UPDATE, "{what}: Hinv nmse {e:e}");
        let e = ((got.loss - want.loss) / want.loss).abs();
        assert!(
            e <= tolerance::SALIENCY_REL,
            "{what}: loss {} vs {}",
            got.loss,
            want.loss
        );
        for &c in removed {
            for r in 0..rows {
                assert_eq!(got.w.get(r, c).to_bits(), 0, "{what}: W[{r},{c}]");
            }
            for j in 0..cols {
                assert_eq!(got.hinv.get(c, j).to_bits(), 0, "{what}: Hinv[{c},{j}]");
                assert_eq!(got.hinv.get(j, c).to_bits(), 0, "{what}: Hinv[{j},{c}]");
            }
        }
        // The loss of one contiguous group is its OBS saliency.
        let width = removed.len();
        let contiguous = removed.windows(2).all(|p| p[1] == p[0] + 1);
        if contiguous && removed[0].is_multiple_of(width) && cols.is_multiple_of(width) {
            let s = saliency(b, &w, &hinv, width, &[removed[0] / width]).data[0] as f64;
            assert!(
                ((s - got.loss) / got.loss).abs() <= tolerance::SALIENCY_REL,
                "{what}: saliency {s} vs loss {}",
                got.loss
            );
        }
    }
}

const UPDATE_SEEDS: Seeds = Seeds {
    w: 11,
    hinv: 12,
    extra_tokens: 17,
};

fn update_cases() -> Vec<UpdateCase> {
    vec![
        (1, 37, vec![3, 17, 18, 36]),
        (13, 37, vec![0]),
        // Spanning the three 24-column groups of 72, not contiguous.
        (13, 72, vec![2, 5, 30, 31, 47, 60, 71]),
        // One whole group.
        (40, 72, (24..48).collect()),
        // More than one 64-column block of the factorisation.
        (
            130,
            300,
            (0..300).filter(|c| c % 4 == 1 || *c == 298).collect(),
        ),
    ]
}

const UPDATE_SPLIT_SEEDS: Seeds = Seeds {
    w: 8,
    hinv: 9,
    extra_tokens: 16,
};

fn update_split_cases() -> Vec<UpdateCase> {
    // Spanning the three groups of 24, not contiguous.
    let scattered = vec![1, 5, 6, 23, 24, 30, 47, 50, 70, 71];
    let mut v = Vec::new();
    for rows in [1, 150] {
        v.push((rows, 72, scattered.clone()));
        v.push((rows, 72, vec![24 + 7]));
        v.push((rows, 72, (24..48).collect()));
        v.push((rows, 37, vec![0, 36]));
    }
    v
}

/// 100 to 200 columns removed: Hinv[S,:] is past the split cap.
fn update_many_columns_cases() -> Vec<UpdateCase> {
    // More than one 64-column block, every third column of 300.
    let thirds: Vec<usize> = (0..300).step_by(3).collect();
    // 130 of 200 (Hinv[S,:] and Y in two bindings on the split backend).
    let most: Vec<usize> = (0..200).filter(|c| c % 3 != 1).take(130).collect();
    let mut v = Vec::new();
    for rows in [1, 150] {
        v.push((rows, 300, thirds.clone()));
        v.push((rows, 200, most.clone()));
        v.push((rows, 300, (50..250).collect()));
    }
    v
}

fn structured_update<B: TestBackend>() {
    let b = B::fresh();
    check_update(&b, UPDATE_SEEDS, &update_cases());
    check_update(&b, UPDATE_SPLIT_SEEDS, &update_split_cases());
    check_update(&b, UPDATE_SPLIT_SEEDS, &update_many_columns_cases());
}

fn structured_update_split<B: TestBackend>() {
    check_update(&split::<B>(), UPDATE_SPLIT_SEEDS, &update_split_cases());
}

fn structured_update_of_many_columns_split<B: TestBackend>() {
    check_update(
        &split::<B>(),
        UPDATE_SPLIT_SEEDS,
        &update_many_columns_cases(),
    );
}

fn structured_update_wide_split<B: TestBackend>() {
    let b = wide_split::<B>();
    check_update(&b, UPDATE_SEEDS, &update_cases());
    b.assert_split_seen();
}

// ---- inverse Hessians that are not positive definite ----

/// An inverse Hessian whose diagonal at column 2 is negative: updates and saliencies that
/// take it are the reference's error, and change nothing.
fn a_removed_block_that_is_not_positive_definite_is_the_references_error<B: TestBackend>() {
    let b = B::fresh();
    let cpu = CpuBackend::new();
    let n = 72;
    let seeds = Seeds {
        w: 14,
        hinv: 13,
        extra_tokens: 17,
    };
    let mut hinv = seeds.hinv(n);
    hinv.data[2 * n + 2] = -1.0;
    let w = seeds.w(5, n);
    let removed = [1usize, 2, 40];
    let (mut wt, mut ht) = (up(&b, &w), up(&b, &hinv));
    let got = b.structured_update(&mut wt, &mut ht, &removed);
    let (mut wc, mut hc) = (up(&cpu, &w), up(&cpu, &hinv));
    let want = cpu.structured_update(&mut wc, &mut hc, &removed);
    assert!(
        matches!(want, Err(KernelError::NotPositiveDefinite { .. })),
        "{want:?}"
    );
    assert!(
        matches!(got, Err(KernelError::NotPositiveDefinite { column }) if column < 3),
        "{got:?}"
    );
    // Nothing was changed.
    assert_eq!(down(&b, &wt).data, w.data);
    assert_eq!(down(&b, &ht).data, hinv.data);
    // The saliency of a group holding it, narrow and wide.
    for width in [1, 24, 72] {
        let group = [2 / width];
        let got = b.obs_saliency(&up(&b, &w), &up(&b, &hinv), width, &group);
        let want = cpu.obs_saliency(&up(&cpu, &w), &up(&cpu, &hinv), width, &group);
        assert!(
            matches!(want, Err(KernelError::NotPositiveDefinite { .. })),
            "{want:?}"
        );
        assert!(
            matches!(got, Err(KernelError::NotPositiveDefinite { .. })),
            "width {width}: {:?}",
            got.map(|_| ())
        );
    }
}

/// Column 30 (in group 1 of width 24) with a negative diagonal: refused as the reference
/// refuses it wherever a group holds it, scored where groups avoid it, and the update leaves
/// W and Hinv as they were.
fn indefinite_blocks_are_refused<B: TestBackend>() {
    let b = B::fresh();
    let cpu = CpuBackend::new();
    let (rows, cols) = (5, 72);
    let seeds = Seeds {
        w: 12,
        hinv: 13,
        extra_tokens: 16,
    };
    let w = seeds.w(rows, cols);
    let mut h = seeds.hinv(cols);
    h.data[30 * cols + 30] = -h.data[30 * cols + 30];
    let npd = |e: KernelError| matches!(e, KernelError::NotPositiveDefinite { .. });
    for (width, groups) in [(1, vec![0, 30, 40]), (24, vec![0, 1, 2]), (24, vec![1])] {
        let want = cpu.obs_saliency(&up(&cpu, &w), &up(&cpu, &h), width, &groups);
        let got = b.obs_saliency(&up(&b, &w), &up(&b, &h), width, &groups);
        assert!(npd(want.unwrap_err()), "width {width}");
        assert!(npd(got.map(|_| ()).unwrap_err()), "width {width}");
    }
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
        assert_eq!(down(&b, &gw).data, w.data, "W changed");
        assert_eq!(down(&b, &gh).data, h.data, "Hinv changed");
    }
}

// ---- compaction ----

/// rows, cols, the kept rows and the kept columns (all where `None`).
type CompactCase = (usize, usize, Option<Vec<usize>>, Option<Vec<usize>>);

/// Compaction copies: the result is the reference's bit for bit.
fn check_compact<B: Backend>(b: &B, seed: u64, cases: &[CompactCase]) {
    let cpu = CpuBackend::new();
    for (rows, cols, kr, kc) in cases {
        let w = heavy_tailed(*rows, *cols, seed);
        let want = down(
            &cpu,
            &cpu.compact(&up(&cpu, &w), kr.as_deref(), kc.as_deref())
                .unwrap(),
        );
        let got = down(
            b,
            &b.compact(&up(b, &w), kr.as_deref(), kc.as_deref()).unwrap(),
        );
        assert_eq!(got.shape(), want.shape(), "compaction of {rows}x{cols}");
        assert_eq!(bits(&got), bits(&want), "compaction of {rows}x{cols}");
    }
}

fn compact_cases() -> Vec<CompactCase> {
    let odd: Vec<usize> = (0..300).filter(|c| c % 3 != 1).collect();
    vec![
        (1, 37, None, Some(vec![0, 5, 36])),
        (13, 300, Some(vec![0, 5, 12]), Some(odd.clone())),
        (13, 300, None, Some(odd)),
        (
            130,
            37,
            Some((0..130).filter(|r| r % 5 != 0).collect()),
            None,
        ),
        (130, 37, None, None),
    ]
}

/// Both, either or neither kept set, and one row with the first and last columns.
fn compact_split_cases() -> Vec<CompactCase> {
    let mut v = Vec::new();
    for (rows, cols) in [(1, 37), (150, 130), (130, 300)] {
        let keep_rows: Vec<usize> = (0..rows).filter(|r| r % 3 != 2).collect();
        let keep_cols: Vec<usize> = (0..cols).filter(|c| c % 4 != 1 && *c != 5).collect();
        v.push((rows, cols, Some(keep_rows.clone()), Some(keep_cols.clone())));
        v.push((rows, cols, None, Some(keep_cols)));
        v.push((rows, cols, Some(keep_rows), None));
        v.push((rows, cols, None, None));
        v.push((rows, cols, Some(vec![rows - 1]), Some(vec![0, cols - 1])));
    }
    v
}

fn compaction_is_exact<B: TestBackend>() {
    let b = B::fresh();
    check_compact(&b, 15, &compact_cases());
    check_compact(&b, 11, &compact_split_cases());
}

fn compaction_split_is_exact<B: TestBackend>() {
    check_compact(&split::<B>(), 11, &compact_split_cases());
}

fn compaction_in_windows_is_exact<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_compact(&b, 15, &compact_cases());
    b.assert_split_seen();
}

// ---- shape errors ----

/// The message of an error the op must return.
fn err<T>(r: Result<T, KernelError>) -> String {
    match r {
        Ok(_) => panic!("a bad input was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Every op given one wrong input (zeros), as the error message it returns.
fn shape_errors<B: Backend>(b: &B) -> Vec<String> {
    let z = |r, c| b.zeros(r, c).unwrap();
    let mut out = Vec::new();
    let mut acc = z(4, 6);
    out.push(err(b.grad_sum(&mut acc, &z(3, 4), &z(2, 6))));
    out.push(err(b.grad_sum(&mut acc, &z(3, 5), &z(3, 6))));
    out.push(err(b.hinv_explicit(&z(4, 6), PERCDAMP)));
    let (w, hinv) = (z(4, 6), z(6, 6));
    out.push(err(b.obs_saliency(&w, &z(5, 5), 2, &[0])));
    out.push(err(b.obs_saliency(&w, &hinv, 4, &[0])));
    out.push(err(b.obs_saliency(&w, &hinv, 2, &[0, 3])));
    out.push(err(b.obs_saliency(&w, &hinv, 0, &[0])));
    let g = z(4, 6);
    let bad = z(4, 5);
    let inp = |kind, gs, gq, axis, width| TaylorInputs {
        w: &w,
        grad_sum: gs,
        grad_sq: gq,
        grad_scale: 1.0,
        fisher_scale: 1.0,
        kind,
        axis,
        width,
    };
    for t in [
        inp(TaylorKind::Taylor1, None, None, SegmentAxis::Rows, 2),
        inp(TaylorKind::Taylor2, Some(&g), None, SegmentAxis::Rows, 2),
        inp(
            TaylorKind::TaylorMix,
            Some(&g),
            Some(&bad),
            SegmentAxis::Rows,
            2,
        ),
        inp(TaylorKind::Taylor1, Some(&bad), None, SegmentAxis::Rows, 2),
        inp(TaylorKind::Taylor1, Some(&g), None, SegmentAxis::Rows, 3),
        inp(TaylorKind::Taylor1, Some(&g), None, SegmentAxis::Cols, 4),
    ] {
        out.push(err(b.taylor_saliency(t)));
    }
    let (mut w2, mut h2) = (z(4, 6), z(6, 6));
    out.push(err(b.structured_update(&mut w2, &mut z(5, 5), &[1])));
    out.push(err(b.structured_update(&mut w2, &mut h2, &[])));
    out.push(err(b.structured_update(&mut w2, &mut h2, &[3, 1])));
    out.push(err(b.structured_update(&mut w2, &mut h2, &[1, 1])));
    out.push(err(b.structured_update(&mut w2, &mut h2, &[6])));
    out.push(err(b.compact(&w, Some(&[2, 1]), None)));
    out.push(err(b.compact(&w, None, Some(&[6]))));
    out.push(err(b.compact(&w, Some(&[]), None)));
    out.push(err(b.compact(&w, None, Some(&[]))));
    out
}

/// What was refused, with the message: every op given one wrong input (heavy-tailed W, real
/// inverse Hessians).
fn refusals<B: Backend>(b: &B) -> Vec<(String, String)> {
    fn refused<T>(what: &str, r: Result<T, KernelError>) -> (String, String) {
        match r {
            Ok(_) => panic!("{what}: a bad input was accepted"),
            Err(e) => (what.to_string(), e.to_string()),
        }
    }
    let seeds = Seeds {
        w: 1,
        hinv: 2,
        extra_tokens: 16,
    };
    let t = |m: &Matrix| up(b, m);
    let (wm, hm, h9m) = (seeds.w(4, 12), seeds.hinv(12), seeds.hinv_with(9, 3));
    let (w, h, h9) = (t(&wm), t(&hm), t(&h9m));
    let mut out = Vec::new();

    // The gradient sum: dY and X disagree on tokens, or A's shape.
    let (dy, x, xbad) = (
        t(&heavy_tailed(5, 4, 4)),
        t(&heavy_tailed(5, 12, 5)),
        t(&heavy_tailed(6, 12, 6)),
    );
    out.push(refused("tokens", b.grad_sum(&mut t(&wm), &dy, &xbad)));
    out.push(refused("accumulator", b.grad_sum(&mut t(&hm), &dy, &x)));
    out.push(refused(
        "hinv of a non-square",
        b.hinv_explicit(&w, PERCDAMP),
    ));

    // OBS saliency: Hinv of the wrong size, a width that does not divide, a group past the end.
    out.push(refused("obs hinv", b.obs_saliency(&w, &h9, 3, &[0])));
    for (width, groups) in [(5, vec![0]), (0, vec![0]), (4, vec![3]), (1, vec![12])] {
        out.push(refused(
            &format!("obs width {width} groups {groups:?}"),
            b.obs_saliency(&w, &h, width, &groups),
        ));
    }

    // Taylor: a missing or misshapen statistic, a width that does not divide.
    let taylor = |kind, grad_sum, grad_sq, axis, width| {
        b.taylor_saliency(TaylorInputs {
            w: &w,
            grad_sum,
            grad_sq,
            grad_scale: 1.0,
            fisher_scale: 1.0,
            kind,
            axis,
            width,
        })
    };
    use SegmentAxis::{Cols, Rows};
    use TaylorKind::{Taylor1, Taylor2, TaylorMix};
    for (what, r) in [
        (
            "taylor1 without the gradient",
            taylor(Taylor1, None, Some(&w), Rows, 1),
        ),
        (
            "taylor2 without the Fisher",
            taylor(Taylor2, Some(&w), None, Rows, 1),
        ),
        (
            "taylor_mix with a misshapen statistic",
            taylor(TaylorMix, Some(&h), Some(&w), Cols, 1),
        ),
        ("taylor width", taylor(Taylor1, Some(&w), None, Cols, 5)),
        (
            "taylor rows width",
            taylor(Taylor2, None, Some(&w), Rows, 3),
        ),
    ] {
        out.push(refused(what, r));
    }

    // The update: unsorted, repeated, past the end, empty, Hinv of the wrong size.
    for removed in [vec![3, 1], vec![2, 2], vec![12], vec![]] {
        out.push(refused(
            &format!("removed {removed:?}"),
            b.structured_update(&mut t(&wm), &mut t(&hm), &removed),
        ));
    }
    out.push(refused(
        "update hinv",
        b.structured_update(&mut t(&wm), &mut t(&h9m), &[1]),
    ));

    // Compaction: unsorted, past the end, nothing kept.
    for (r, c) in [
        (Some(vec![1, 0]), None),
        (None, Some(vec![12])),
        (Some(vec![]), None),
        (None, Some(vec![])),
    ] {
        out.push(refused(
            &format!("compact {r:?} {c:?}"),
            b.compact(&w, r.as_deref(), c.as_deref()),
        ));
    }
    out
}

fn shape_errors_are_the_references<B: TestBackend>() {
    let (cpu, b) = (CpuBackend::new(), B::fresh());
    let want = shape_errors(&cpu);
    assert_eq!(shape_errors(&b), want);
    let want_named = refusals(&cpu);
    for ((what, want), (_, got)) in want_named.iter().zip(refusals(&b)) {
        assert_eq!(&got, want, "{what}");
    }
    // Each is a refusal of the input, not a device failure.
    for m in want.iter().chain(want_named.iter().map(|(_, m)| m)) {
        assert!(
            m.starts_with("shape mismatch") || m.starts_with("invalid argument"),
            "{m}"
        );
    }
}

// ---- LLaMA-sized shapes ----

/// LLaMA-sized tensors (W 4096 x 11008 and its 11008² inverse Hessian, 484 MB, past a 128 MiB
/// binding; groups of 1376 columns, wider than LLaMA-2-70B's 8·128-column KV groups) against
/// closed forms, since the reference would need a Hessian of 11008 columns: with a diagonal
/// Hinv = diag(d) the update zeroes W[:,S] and d_S and nothing else, and ε_S = ½·Σ W[:,S]²/d_S.
/// Ignored by default (minutes on a software adapter); run with `-- --ignored`.
fn llama_sized_structured_ops_match_closed_forms<B: TestBackend>() {
    let b = B::plain();
    let (rows, n, width) = (4096, 11008, 1376);
    let w = heavy_tailed(rows, n, 21);
    let d: Vec<f32> = heavy_tailed_positive(1, n, 22)
        .data
        .iter()
        .map(|v| 0.5 + v)
        .collect();
    let mut hinv = Matrix::zeros(n, n);
    for (c, &v) in d.iter().enumerate() {
        hinv.data[c * n + c] = v;
    }
    let half_sq = |cols: &mut dyn Iterator<Item = usize>| -> f64 {
        let cols: Vec<usize> = cols.collect();
        (0..rows)
            .map(|r| {
                cols.iter()
                    .map(|&c| (w.get(r, c) as f64).powi(2) / d[c] as f64)
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0
    };
    let (wt, ht) = (up(&b, &w), up(&b, &hinv));

    // The saliency of three wide groups and of every single column.
    let groups = [2usize, 0, 7];
    let got = down(&b, &b.obs_saliency(&wt, &ht, width, &groups).unwrap());
    for (i, &g) in groups.iter().enumerate() {
        let want = half_sq(&mut (g * width..(g + 1) * width));
        let e = (got.data[i] as f64 - want).abs() / want;
        assert!(
            e <= tolerance::SALIENCY_REL,
            "group {g}: {} vs {want}",
            got.data[i]
        );
    }
    let all: Vec<usize> = (0..n).collect();
    let got = down(&b, &b.obs_saliency(&wt, &ht, 1, &all).unwrap());
    for c in (0..n).step_by(97) {
        let want = half_sq(&mut std::iter::once(c));
        let e = (got.data[c] as f64 - want).abs() / want;
        assert!(
            e <= tolerance::SALIENCY_REL,
            "column {c}: {} vs {want}",
            got.data[c]
        );
    }

    // Taylor sums of 128-row segments of the producer-shaped (11008 x 4096) transpose.
    let wp = Matrix::from_fn(n, rows, |r, c| w.get(c, r));
    let gs = heavy_tailed(n, rows, 23);
    let (wpt, gst) = (up(&b, &wp), up(&b, &gs));
    let s = b
        .taylor_saliency(TaylorInputs {
            w: &wpt,
            grad_sum: Some(&gst),
            grad_sq: None,
            grad_scale: 0.25,
            fisher_scale: 0.0,
            kind: TaylorKind::Taylor1,
            axis: SegmentAxis::Rows,
            width: 128,
        })
        .unwrap();
    let got = down(&b, &s);
    for k in 0..n / 128 {
        let want: f64 = (k * 128 * rows..(k + 1) * 128 * rows)
            .map(|i| (wp.data[i] as f64 * 0.25 * gs.data[i] as f64).abs())
            .sum();
        let e = (got.data[k] as f64 - want).abs() / want;
        assert!(
            e <= tolerance::SALIENCY_REL,
            "segment {k}: {} vs {want}",
            got.data[k]
        );
    }
    drop((wpt, gst));

    // One wide group and a scattered few columns removed.
    let mut removed: Vec<usize> = (3 * width..4 * width).collect();
    removed.extend([5, 700, 11007]);
    removed.sort_unstable();
    let (mut wt, mut ht) = (wt, ht);
    let loss = b.structured_update(&mut wt, &mut ht, &removed).unwrap();
    let want = half_sq(&mut removed.iter().copied());
    assert!(
        ((loss - want) / want).abs() <= tolerance::SALIENCY_REL,
        "loss {loss} vs {want}"
    );
    let mut want_w = w.clone();
    for r in 0..rows {
        for &c in &removed {
            want_w.data[r * n + c] = 0.0;
        }
    }
    let e = nmse(&want_w, &down(&b, &wt));
    assert!(e <= tolerance::STRUCTURED_UPDATE, "W nmse {e:e}");
    let got_h = down(&b, &ht);
    for &c in &removed {
        hinv.data[c * n + c] = 0.0;
    }
    let e = nmse(&hinv, &got_h);
    assert!(e <= tolerance::STRUCTURED_UPDATE, "Hinv nmse {e:e}");

    // The compacted consumer.
    let kept: Vec<usize> = (0..n)
        .filter(|c| removed.binary_search(c).is_err())
        .collect();
    let got = down(&b, &b.compact(&wt, None, Some(&kept)).unwrap());
    assert_eq!(got.shape(), (rows, kept.len()));
    for r in (0..rows).step_by(31) {
        for (j, &c) in kept.iter().enumerate() {
            assert_eq!(got.get(r, j), w.get(r, c));
        }
    }
}

/// The tests of every body for backend `$B`, with the attributes in `windows` on those whose
/// tensors come in 8 KiB windows, and those in `blocks_past_the_cap` on those whose blocks
/// (Hinv[S,:] and the S x S block) are past `SPLIT_BYTES`.
macro_rules! update_tests {
    ($B:ty, windows: $windows:tt, blocks_past_the_cap: $blocks:tt) => {
        instantiate!(
            $B,
            [],
            structured_update,
            structured_update_split,
            structured_update_wide_split,
            a_removed_block_that_is_not_positive_definite_is_the_references_error,
            indefinite_blocks_are_refused,
            compaction_is_exact,
            compaction_split_is_exact,
            shape_errors_are_the_references,
        );
        instantiate!(
            $B,
            $windows,
            compaction_in_windows_is_exact,
        );
        instantiate!(
            $B,
            $blocks,
            structured_update_of_many_columns_split,
        );
        instantiate!(
            $B,
            [#[ignore = "minutes on a software adapter; run on purpose"]],
            llama_sized_structured_ops_match_closed_forms,
        );
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    update_tests!(
        prunebench_kernels::wgpu::WgpuBackend,
        windows: [],
        blocks_past_the_cap: [
            // FINDING, kept marked: wgpu binds the removed rows Hinv[S,:] and the S x S
            // block whole, so at 64 rows of 300 columns it refuses 100 to 200 removed
            // columns with `Unsupported` where CubeCL splits them.
            #[should_panic(expected = "Unsupported")]
        ]
    );
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    update_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        windows: [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ],
        blocks_past_the_cap: []
    );
}
