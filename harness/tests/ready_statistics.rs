//! Statistics read ready-made from a calibration file prune exactly as the same statistics
//! accumulated from samples: the two paths of `prune_layer` agree.

use prunebench_harness::{prune_layer, Calibration, Method, PruneConfig};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, GradNorm, Sparsity};
use prunebench_models::calibration::{write_statistics, CalibrationFile, ReadyStatistics};
use prunebench_models::config::lookup;
use prunebench_models::synthetic::{synthetic_layer, SyntheticCalibration};
use prunebench_models::CalibrationSource;

#[test]
fn ready_statistics_match_accumulated_ones() {
    let cfg = lookup("tiny").unwrap();
    let linears = cfg.linears();
    let layer = synthetic_layer(&cfg, 0, &linears[..3], 4);
    let cal = SyntheticCalibration::new(&cfg, 0, 4, 32, 4);
    let b = CpuBackend::new();

    // The statistics the harness would accumulate, computed by the reference.
    let g = linears[0].input;
    let (mut act, mut h) = (b.zeros(1, 256).unwrap(), b.zeros(256, 256).unwrap());
    let mut grads: Vec<_> = linears[..3]
        .iter()
        .map(|l| b.zeros(l.rows, l.cols).unwrap())
        .collect();
    for s in 0..cal.samples() {
        let x = b.upload(&cal.input(g, s).unwrap()).unwrap();
        b.act_stat_update(&mut act, s, &x, 1).unwrap();
        b.hessian_update(&mut h, s, &x, 1).unwrap();
        for (acc, l) in grads.iter_mut().zip(&linears[..3]) {
            let dy = b.upload(&cal.output_grad(l, s).unwrap()).unwrap();
            b.grad_accumulate_fused(acc, &dy, &x, GradNorm::L2).unwrap();
        }
    }
    let stats = ReadyStatistics {
        act: vec![(g, b.download(&act).unwrap())],
        hessian: vec![(g, b.download(&h).unwrap())],
        grad: grads
            .iter()
            .zip(&linears[..3])
            .map(|(acc, l)| {
                (
                    l.clone(),
                    b.download(&b.grad_finalize(acc, GradNorm::L2).unwrap())
                        .unwrap(),
                )
            })
            .collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.safetensors");
    write_statistics(&path, &cfg, &stats).unwrap();
    let file = CalibrationFile::open(&path, &cfg).unwrap();
    assert_eq!(file.samples(), 0, "a statistics-only file has no samples");

    for method in [Method::Gblm, Method::Sparsegpt, Method::Wanda] {
        let pc = PruneConfig::new(method, Sparsity::Unstructured(0.5));
        let accumulated = prune_layer(
            &b,
            &layer,
            &Calibration {
                source: &cal,
                ready: None,
            },
            &pc,
            true,
            &|_| {},
        )
        .unwrap();
        let ready = prune_layer(
            &b,
            &layer,
            &Calibration {
                source: &file,
                ready: Some(&file),
            },
            &pc,
            true,
            &|_| {},
        )
        .unwrap();
        assert!(
            !ready.report.groups[0].ready.is_empty(),
            "{method}: statistics were not read"
        );
        for (a, r) in accumulated.report.linears.iter().zip(&ready.report.linears) {
            // The file stores f32: the two runs differ by that rounding only.
            let rel = (a.recon_error - r.recon_error).abs() / a.recon_error;
            assert!(
                rel < 1e-4,
                "{method} {}: {} vs {}",
                a.name,
                a.recon_error,
                r.recon_error
            );
            assert_eq!(a.pruned, r.pruned);
        }
        let differ: u32 = accumulated
            .masks
            .iter()
            .zip(&ready.masks)
            .flat_map(|(x, y)| {
                x.bits
                    .iter()
                    .zip(&y.bits)
                    .map(|(p, q)| (p ^ q).count_ones())
            })
            .sum();
        assert!(differ <= 4, "{method}: {differ} mask bits differ");
    }
}
